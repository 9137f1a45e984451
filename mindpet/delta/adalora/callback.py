"""AdaLoRA's rank allocator, a ``Model.train`` callback: the budget schedule, the triplet scores and the masks."""
import numpy as np
from mindspore import Tensor
from mindspore.train import Callback

from mindpet.delta.adalora.config import AdaLoraConfig
from mindpet.delta.adalora.layer import ADALORA_E
from mindpet.delta.adalora.train import TRACKED, require_adalora_cells
from mindpet.utils.logger import logger
from mindpet.utils.validation import argument_error


def triplet_scores(sensitivity, uncertainty):
    """The importance of each triplet ``(P_i, E_i, Q_i)`` of one cell: ``s(E_i) + mean_j s(P_ij) + mean_j s(Q_ji)``
    with ``s = Ibar * U`` per entry (the AdaLoRA paper, eq. 11). ``sensitivity`` and ``uncertainty`` are the
    ``(P, E, Q)`` arrays of the cell; returns ``(rank,)``."""
    score_p, score_e, score_q = (smoothed * uncertain for smoothed, uncertain in zip(sensitivity, uncertainty))
    return score_e.reshape(-1) + score_p.mean(axis=1) + score_q.mean(axis=0)


def keep_to_budget(scores, budget):
    """A bool mask over the concatenated ``scores`` that keeps the ``budget`` highest (ties broken by position, so
    exactly ``budget`` are kept; PEFT prunes every score up to the threshold, ties included)."""
    keep = np.ones(scores.shape, bool)
    pruned = scores.size - budget
    if pruned > 0:
        keep[np.argsort(scores, kind="stable")[:pruned]] = False
    return keep


class AdaLoraCallback(Callback):
    """AdaLoRA's rank allocator, a MindSpore callback for ``Model.train``.

    It works with :class:`~mindpet.delta.adalora.AdaLoraTrainOneStepCell`, which updates the importance of every
    entry in the training graph; the callback reads it. After optimizer step ``t`` (``cur_step_num``) it applies
    PEFT's schedule (:meth:`AdaLoraConfig.budget`): nothing while ``t <= tinit``; every `deltaT` steps until
    ``total_step - tfinal`` it keeps the ``budget`` triplets of highest importance over all cells and zeroes the
    singular values ``E`` of the others, in place (they may grow back, as in the paper and PEFT); at
    ``t = total_step - tfinal`` it fixes the final pattern of ``target_r * n`` triplets: each cell's rank mask is set,
    its pruned ``E`` entries are zeroed, and the kept triplets go into ``config.rank_pattern`` (``{cell path:
    [bool] * init_r}``) and :attr:`rank_pattern`. Masks change values, never shapes: the compiled graph is reused.

    In dataset sink mode, ``on_train_step_end`` runs once per sink; a reallocation happens when a multiple of
    `deltaT` was crossed (a warning says so when the sink size does not divide `deltaT`), and the final pattern at
    the first callback at or after ``total_step - tfinal``. A warning is logged when the run's step count differs
    from ``config.total_step`` and when the run ends before the final pattern was fixed.

    Args:
        network (Cell): the network holding the :class:`~mindpet.delta.AdaLoRADense` cells, all of rank `init_r`.
        config (AdaLoraConfig): the config they were injected with; its schedule is used and its `rank_pattern`
            written.

    Raises:
        TypeError: `config` is not an AdaLoraConfig.
        ValueError: `network` holds no AdaLoRA cell, or one whose rank is not ``config.init_r``.
        RuntimeError: at the start of training, when no AdaLoraTrainOneStepCell was built with this callback.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindspore.dataset import NumpySlicesDataset
        >>> from mindspore.train import Model
        >>> from mindpet import AdaLoraCallback, AdaLoraConfig, get_delta_model
        >>> from mindpet.delta.adalora import AdaLoraOrthogonalLoss, AdaLoraTrainOneStepCell
        >>> config = AdaLoraConfig(target_modules=["0", "2"], init_r=4, target_r=2, tinit=2, tfinal=2, deltaT=2,
        ...                        total_step=8, lora_alpha=8)
        >>> net = get_delta_model(nn.SequentialCell([nn.Dense(8, 6), nn.ReLU(), nn.Dense(6, 2)]), config)
        >>> allocator = AdaLoraCallback(net, config)
        >>> loss = AdaLoraOrthogonalLoss(nn.WithLossCell(net, nn.MSELoss()), config.orth_reg_weight)
        >>> step = AdaLoraTrainOneStepCell(loss, nn.Adam(net.trainable_params(), 0.01), allocator)
        >>> rng = np.random.default_rng(0)
        >>> data = NumpySlicesDataset({"x": rng.normal(size=(32, 8)).astype(np.float32),
        ...                            "y": rng.normal(size=(32, 2)).astype(np.float32)}, shuffle=False).batch(4)
        >>> Model(step).train(1, data, callbacks=[allocator], dataset_sink_mode=False)
        >>> ranks = config.final_ranks()
        >>> sorted(ranks) == ["0", "2"], sum(ranks.values())
        (True, 4)
        >>> sum(int(np.count_nonzero(net[i].mindpet_delta_adalora_e.asnumpy())) for i in (0, 2))
        4
    """

    def __init__(self, network, config):
        super().__init__()
        owner = type(self).__name__
        if not isinstance(config, AdaLoraConfig):
            raise argument_error(TypeError, owner, "config", "an AdaLoraConfig", config)
        self.config = config.validate()
        cells = require_adalora_cells(network, owner)
        wrong = [(path, cell.lora_rank) for path, cell in cells if cell.lora_rank != config.init_r]
        if wrong:
            raise argument_error(ValueError, owner, "network", f"AdaLoRA cells of rank init_r={config.init_r} "
                                 f"(truncated cells cannot be reallocated; first other: {wrong[0]})",
                                 type(network).__name__)
        self.cells = [cell for _, cell in cells]
        # Keyed by the module path in the parameter names, which stays the same when a training cell wraps the net.
        self.paths = [getattr(cell, ADALORA_E).name[:-len(ADALORA_E) - 1] for cell in self.cells]
        self.train_cell = None
        self.rank_pattern = None
        # (step, budget) of every reallocation, the final one included.
        self.allocations = []
        self.last_step = 0

    def attach(self, train_cell, cells):
        """Called by :class:`~mindpet.delta.adalora.AdaLoraTrainOneStepCell`: read its importance state.

        Raises:
            ValueError: the training cell holds other AdaLoRA cells than this callback's network.
        """
        if [id(cell) for cell in cells] != [id(cell) for cell in self.cells]:
            raise argument_error(ValueError, type(train_cell).__name__, "allocator",
                                 "an AdaLoraCallback of the network being trained (it was built for another one)",
                                 type(self).__name__)
        self.train_cell = train_cell

    @property
    def final_step(self):
        """The step at which the final pattern is fixed: ``total_step - tfinal``."""
        return self.config.total_step - self.config.tfinal

    def on_train_begin(self, run_context):
        if self.train_cell is None:
            raise RuntimeError("For 'AdaLoraCallback', no AdaLoraTrainOneStepCell was built with this callback: "
                               "without one nothing tracks the importance the budget is allocated by. Build "
                               "AdaLoraTrainOneStepCell(network_with_loss, optimizer, allocator=this callback) and "
                               "train it with Model(train_cell).")
        params = run_context.original_args()
        total = params.epoch_num * params.batch_num
        if total != self.config.total_step:
            logger.warning("AdaLoraCallback: this run trains %d steps but config.total_step is %d; the budget "
                           "schedule (final pattern at step %d) follows total_step.", total, self.config.total_step,
                           self.final_step)
        sink_size = getattr(params, "sink_size", -1) if getattr(params, "dataset_sink_mode", False) else -1
        if sink_size > 0 and self.config.deltaT % sink_size != 0:
            logger.warning("AdaLoraCallback: sink_size %d does not divide deltaT %d; in sink mode the budget is "
                           "reallocated at the first sink end after each multiple of deltaT.", sink_size,
                           self.config.deltaT)
        self.last_step = params.cur_step_num
        self.train_cell.allocator_running = True

    def on_train_step_end(self, run_context):
        step = run_context.original_args().cur_step_num
        if self.rank_pattern is None:
            if step >= self.final_step:
                self._fix_final_pattern(step)
            elif step > self.config.tinit and step // self.config.deltaT > self.last_step // self.config.deltaT:
                budget, _ = self.config.budget(step, len(self.cells))
                self._apply(self._keep(budget), final=False)
                self.allocations.append((step, budget))
        self.last_step = step

    def on_train_end(self, run_context):
        self.train_cell.allocator_running = False
        if self.rank_pattern is None:
            logger.warning("AdaLoraCallback: training ended at step %d, before the final pattern is fixed at step "
                           "%d (total_step - tfinal): the ranks are not final and config.rank_pattern is not set.",
                           self.last_step, self.final_step)

    def scores(self):
        """The triplet scores of every cell, ``[(rank,)]``, from the training cell's importance state."""
        count = len(TRACKED)
        sensitivity = [param.asnumpy() for param in self.train_cell.sensitivity]
        uncertainty = [param.asnumpy() for param in self.train_cell.uncertainty]
        return [triplet_scores(sensitivity[i * count:(i + 1) * count], uncertainty[i * count:(i + 1) * count])
                for i in range(len(self.cells))]

    def _keep(self, budget):
        """Per cell, the bool mask of the triplets kept under ``budget``."""
        scores = self.scores()
        keep = keep_to_budget(np.concatenate(scores), budget)
        return np.split(keep, np.cumsum([score.size for score in scores])[:-1])

    def _apply(self, keep, final):
        for cell, kept in zip(self.cells, keep):
            values = getattr(cell, ADALORA_E)
            values.set_data(Tensor(values.asnumpy() * kept[:, None], values.dtype))
            if final:
                cell.adalora_rank_mask.set_data(Tensor(kept[:, None].astype(np.float32), cell.adalora_rank_mask.dtype))

    def _fix_final_pattern(self, step):
        budget = self.config.target_r * len(self.cells)
        keep = self._keep(budget)
        self._apply(keep, final=True)
        self.rank_pattern = {path: [bool(flag) for flag in kept] for path, kept in zip(self.paths, keep)}
        self.config.rank_pattern = dict(self.rank_pattern)
        self.allocations.append((step, budget))
        logger.info("AdaLoraCallback: final ranks at step %d: %s", step,
                    {path: sum(kept) for path, kept in self.rank_pattern.items()})
