"""Delta checkpoints: save only the trained parameters during ``Model.train`` and load them onto a base network.

A delta-tuned network trains a small share of its parameters. :class:`TrainableParamsCheckPoint` writes just those,
without the frozen base weights and without optimizer state, and :func:`load_delta_checkpoint` puts them back onto a
network that already holds its base weights.
"""
import os
import shutil
import tempfile
import threading
import time
from typing import NamedTuple

import mindspore as ms
from mindspore import Tensor, nn
from mindspore.train import ModelCheckpoint

from mindpet.utils.logger import logger
from mindpet.utils.validation import argument_error, check_bool, check_str

CHECKPOINT_FORMATS = ("ckpt", "safetensors")
# MindSpore refuses these CheckpointConfig settings together with format='safetensors': name and default.
_SAFETENSORS_DEFAULTS = (("enc_key", None), ("enc_mode", "AES-GCM"))
# The counters CheckpointConfig(append_info=['epoch_num', 'step_num']) stores beside the parameters.
TRAINING_COUNTER_KEYS = ("epoch_num", "step_num")
_STAGING_PREFIX = ".mindpet_staging_"
_WRITER_THREAD_NAME = "mindpet_delta_checkpoint_writer"


def _optimizer_state_ids(network):
    """Ids of the parameters that optimizers inside ``network`` own but do not update (moments, step, lr)."""
    state_ids = set()
    for _, cell in network.cells_and_names():
        if isinstance(cell, nn.Optimizer):
            updated_ids = {id(param) for param in cell.parameters}
            state_ids.update(id(param) for param in cell.get_parameters() if id(param) not in updated_ids)
    return state_ids


def trained_parameters(network):
    """The parameters of ``network`` a delta checkpoint holds: ``requires_grad=True`` minus optimizer state.

    Optimizer state (``global_step``, ``learning_rate``, ``moment1.*``, ...) also has ``requires_grad=True``, so it
    is told apart by ownership: a parameter of an ``nn.Optimizer`` cell that is not in that optimizer's
    ``parameters`` is state, not a weight.

    Args:
        network (mindspore.nn.Cell): A network, a network with loss, or a training cell holding an optimizer.

    Returns:
        list[Parameter], in the order of ``network.get_parameters()``.

    Raises:
        TypeError: If `network` is not a `mindspore.nn.Cell`.

    Examples:
        >>> from mindspore import nn
        >>> from mindpet.graph.ckpt_util import trained_parameters
        >>> net = nn.Dense(3, 2)
        >>> net.bias.requires_grad = False
        >>> train_net = nn.TrainOneStepCell(net, nn.Adam(net.trainable_params()))
        >>> [param.name for param in trained_parameters(train_net)]
        ['weight']
    """
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, "trained_parameters", "network", "a mindspore.nn.Cell", network)
    state_ids = _optimizer_state_ids(network)
    return [param for param in network.get_parameters() if param.requires_grad and id(param) not in state_ids]


def _snapshot(tensor):
    # asnumpy() can alias the parameter's memory, and the next step updates it in place, so copy first.
    return Tensor.from_numpy(tensor.asnumpy().copy())


def save_atomically(entries, append_dict, file_path, config):
    """Write ``entries`` to ``file_path`` so that the path holds either its old content or the complete new file.

    MindSpore's writer removes an existing file before writing and leaves its own temporary file behind on failure,
    so it writes inside a private staging directory next to ``file_path`` (same file system, so ``os.replace`` is
    atomic), and the staging directory goes away whatever happens.
    """
    staging_dir = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=os.path.dirname(file_path))
    try:
        staged_path = os.path.join(staging_dir, os.path.basename(file_path))
        ms.save_checkpoint(entries, staged_path, async_save=False, append_dict=append_dict,
                           enc_key=config.enc_key, enc_mode=config.enc_mode, crc_check=config.crc_check,
                           format=config.format)
        os.replace(staged_path, file_path)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)


class TrainableParamsCheckPoint(ModelCheckpoint):
    """
    A `mindspore.train.ModelCheckpoint` that saves only the trained parameters of the network.

    It saves every parameter with ``requires_grad=True`` and never optimizer state, under the same keys
    (``Parameter.name``) as the full checkpoint. The saved network is ``config.saved_network`` when set, else the
    network given to `Model`. Files are named ``<prefix>-<epoch>_<step>.<format>`` and follow `CheckpointConfig`:
    save_checkpoint_steps or save_checkpoint_seconds, keep_checkpoint_max or keep_checkpoint_per_n_minutes,
    append_info, enc_key and enc_mode, crc_check, format (``'ckpt'`` or ``'safetensors'``) and async_save.
    No ``-graph.meta`` file is written.

    Every file is written to a staging directory next to it and moved into place with ``os.replace``, so a file
    under its final name is always complete; a failed save leaves the previous files as they were and raises. The
    values are copied when the save triggers; with async_save (``True``, ``'thread'`` or ``'process'``) a
    background thread writes the copy, and the next save and `end` wait for it and raise its error, if any.

    Args:
        prefix (Union[str, callable]): The file name prefix, or a callable that returns the whole file stem from the
            callback parameters, as in `ModelCheckpoint`. Default: ``'DELTA_CKP'``.
        directory (Union[str, callable], optional): The folder of the files, or a callable that returns it. ``None``
            means the current working directory. Default: ``None``.
        config (CheckpointConfig, optional): The saving strategy. ``None`` means ``CheckpointConfig()``.
            Default: ``None``.

    Inputs:
        - **run_context** (RunContext) - Passed by `Model.train` to `step_end` and `end`.

    Outputs:
        None. Checkpoint files appear in `directory`; `latest_ckpt_file_name` is the path of the newest one.

    Raises:
        ValueError: If `prefix` is neither callable nor a str without ``'/'``, or `config.format` is not
            ``'ckpt'`` or ``'safetensors'``, or a safetensors config sets `enc_key` or a non-default `enc_mode`, or
            the config asks for `remove_redundancy` or `incremental`, which this callback does not implement.
        TypeError: If `config` is not a `CheckpointConfig`.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import numpy as np
        >>> import mindspore as ms
        >>> import mindspore.dataset as ds
        >>> from mindspore import nn
        >>> from mindspore.train import Model, CheckpointConfig
        >>> from mindpet.graph import TrainableParamsCheckPoint
        >>> net = nn.SequentialCell([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 2)])
        >>> for param in net[0].get_parameters():
        ...     param.requires_grad = False
        >>> data = {"x": np.random.rand(8, 4).astype(np.float32), "y": np.random.randint(0, 2, (8,)).astype(np.int32)}
        >>> dataset = ds.NumpySlicesDataset(data, shuffle=False).batch(4)
        >>> loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean')
        >>> model = Model(net, loss, nn.Adam(net.trainable_params(), 0.01))
        >>> ckpt_dir = tempfile.mkdtemp()
        >>> delta_cb = TrainableParamsCheckPoint(prefix='delta', directory=ckpt_dir,
        ...                                      config=CheckpointConfig(save_checkpoint_steps=2))
        >>> model.train(1, dataset, callbacks=[delta_cb])
        >>> os.path.basename(delta_cb.latest_ckpt_file_name)
        'delta-1_2.ckpt'
        >>> sorted(ms.load_checkpoint(delta_cb.latest_ckpt_file_name))
        ['2.bias', '2.weight']
    """

    _OWNER = "TrainableParamsCheckPoint"

    def __init__(self, prefix='DELTA_CKP', directory=None, config=None):
        super().__init__(prefix=prefix, directory=directory, config=config)
        self._check_config(self._config)
        # ModelCheckpoint.step_end writes '<prefix>-graph.meta' once unless this is set; a delta folder holds deltas.
        self._graph_saved = True
        self._writer = None
        self._writer_error = None

    @classmethod
    def _check_config(cls, config):
        if config.format not in CHECKPOINT_FORMATS:
            raise argument_error(ValueError, cls._OWNER, "format", f"one of {CHECKPOINT_FORMATS}", config.format)
        if config.format == "safetensors":
            for name, default in _SAFETENSORS_DEFAULTS:
                if getattr(config, name) != default:
                    # The value is not echoed: for enc_key it is a secret.
                    raise ValueError(f"For '{cls._OWNER}', the argument '{name}' of CheckpointConfig must be "
                                     f"{default!r} when format is 'safetensors', because MindSpore does not "
                                     f"encrypt safetensors files.")
        for name, enabled in (("remove_redundancy", config.remove_redundancy),
                              ("incremental", config.map_param_inc)):
            if enabled:
                raise argument_error(ValueError, cls._OWNER, name,
                                     "False (a delta checkpoint is always saved whole)", enabled)

    def on_train_end(self, run_context):
        """Save the last checkpoint, as `ModelCheckpoint` does, and wait until every file is written.

        MindSpore's ``Model`` warns about (``train``) or refuses (``fit``) user callbacks that define the
        old-style ``end``, so the hook is ``on_train_end``; it reaches ``ModelCheckpoint.end`` through ``Callback``.

        Args:
            run_context (RunContext): Context of the training run.
        """
        super().on_train_end(run_context)
        self._wait_for_writer()

    def _save_ckpt(self, cb_params, force_to_save=False):
        # Replaces ModelCheckpoint._save_ckpt, which saves the whole train network (optimizer state included).
        if cb_params.cur_step_num == self._last_triggered_step:
            return
        if self._need_flush_from_cache:
            self._flush_from_cache(cb_params)
        if not self._check_save_ckpt(cb_params, force_to_save):
            return

        self._wait_for_writer()
        file_path = os.path.join(self._directory, self._file_name(cb_params))
        self._last_triggered_step = cb_params.cur_step_num
        self._append_dict_content(cb_params.cur_epoch_num, cb_params.cur_step_num)

        network = self._config.saved_network if self._config.saved_network is not None else cb_params.network
        entries = [{"name": param.name, "data": _snapshot(param)} for param in trained_parameters(network)]
        # ModelCheckpoint updates its append dict in place at every save, so an async write needs its own copy.
        append_dict = {key: _snapshot(value) if isinstance(value, Tensor) else value
                       for key, value in self._append_dict.items()}
        previous_keep_time, self._last_time_for_keep = self._last_time_for_keep, time.time()

        # The prefix is passed along because a callable prefix may change it while a background write runs.
        write_args = (entries, append_dict, file_path, self._prefix, previous_keep_time)
        if self._config.async_save:
            self._writer = threading.Thread(target=self._write_in_background, name=_WRITER_THREAD_NAME,
                                            args=write_args)
            self._writer.start()
        else:
            self._write(*write_args)
        self._latest_ckpt_file_name = file_path

    def _file_name(self, cb_params):
        if self._prefix_func:
            return f"{self._prefix}.{self._config.format}"
        step_in_epoch = (cb_params.cur_step_num - 1) % cb_params.batch_num + 1
        return f"{self._prefix}-{cb_params.cur_epoch_num}_{step_in_epoch}.{self._config.format}"

    def _write(self, entries, append_dict, file_path, prefix, previous_keep_time):
        save_atomically(entries, append_dict, file_path, self._config)
        # Old files go only once the new one is in place, so a failed save never costs an older file.
        self._remove_outdated_files(file_path, prefix, previous_keep_time)

    def _write_in_background(self, *write_args):
        try:
            self._write(*write_args)
        except Exception as error:  # noqa: BLE001
            # Any failure is handed to the training thread, which raises it at the next save or at the end.
            self._writer_error = error

    def _wait_for_writer(self):
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            raise error

    def _remove_outdated_files(self, new_file, prefix, previous_keep_time):
        """Apply keep_checkpoint_max or keep_checkpoint_per_n_minutes to the files older than ``new_file``."""
        self._manager.update_ckpoint_filelist(os.path.dirname(new_file), prefix)
        older_files = [path for path in self._manager.ckpoint_filelist if path != new_file]
        # The manager's per-minute rule thins out every file it lists; the file just written must stay.
        self._manager.ckpoint_filelist[:] = older_files
        keep_max = self._config.keep_checkpoint_max
        keep_minutes = self._config.keep_checkpoint_per_n_minutes
        if keep_max:
            surplus = len(older_files) + 1 - keep_max
            for path in sorted(older_files, key=os.path.getmtime)[:max(surplus, 0)]:
                self._manager.remove_ckpoint_file(path)
        elif keep_minutes:
            now = time.time()
            if now - previous_keep_time < keep_minutes * 60:
                self._manager.keep_one_ckpoint_per_minutes(keep_minutes, now)


class DeltaLoadResult(NamedTuple):
    """What :func:`load_delta_checkpoint` found: names it expected but missed, and names it could not place."""
    missing: list[str]
    unexpected: list[str]


def _checkpoint_format(ckpt_file_name, owner):
    extension = os.path.splitext(ckpt_file_name)[1].lstrip(".")
    if extension not in CHECKPOINT_FORMATS:
        raise argument_error(ValueError, owner, "ckpt_file_name",
                             f"a path ending in one of {tuple('.' + fmt for fmt in CHECKPOINT_FORMATS)}",
                             ckpt_file_name)
    return extension


def _check_compatible(param, value, ckpt_file_name, owner):
    for attribute in ("shape", "dtype"):
        expected, found = getattr(param, attribute), getattr(value, attribute)
        if expected != found:
            raise ValueError(f"For '{owner}', the parameter '{param.name}' has {attribute} {expected} in the "
                             f"network but {found} in '{ckpt_file_name}'.")


def load_delta_checkpoint(net, ckpt_file_name, strict=True, dec_key=None, dec_mode='AES-GCM'):
    """
    Load a delta checkpoint onto a network that already holds its base weights.

    The expected keys are the trained parameters of `net`: ``requires_grad=True`` minus optimizer state. Freeze
    `net` exactly as in training (the same ``freeze_delta(...)`` call) before loading, so that this set matches what
    the delta holds. Every checkpoint entry named like a parameter of `net` is loaded, frozen ones included. All
    entries are checked before any is loaded, so on an error `net` is unchanged.

    Args:
        net (mindspore.nn.Cell): The network to load into, with its base weights already in place.
        ckpt_file_name (str): A delta checkpoint, ``.ckpt`` or ``.safetensors`` (the extension picks the format).
        strict (bool): Whether missing or unexpected entries raise ValueError. When ``False``, they are logged as a
            warning and the rest is loaded. Default: ``True``.
        dec_key (Union[None, bytes]): The key of an encrypted ``.ckpt`` file. Default: ``None``.
        dec_mode (str): The encryption mode: ``'AES-GCM'``, ``'AES-CBC'`` or ``'SM4-CBC'``. Default: ``'AES-GCM'``.

    Returns:
        DeltaLoadResult, with `missing` (trained parameters of `net` absent from the file) and `unexpected` (file
        entries that are no parameter of `net`, such as extra values stored by ``CheckpointConfig(append_info=...)``).
        The training counters ``epoch_num`` and ``step_num`` are metadata, never unexpected.

    Raises:
        TypeError: If `net` is not a `mindspore.nn.Cell`, `ckpt_file_name` is not a str or `strict` is not a bool.
        FileNotFoundError: If `ckpt_file_name` is not an existing file.
        ValueError: If the extension is neither ``.ckpt`` nor ``.safetensors``, if an entry's shape or dtype
            differs from the parameter of the same name, if a cell of `net` is merged (a LoRA update folded into
            its weight would no longer match the loaded delta), or, with `strict`, if any entry is missing or
            unexpected.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet.graph import load_delta_checkpoint
        >>> trained = nn.Dense(3, 2)
        >>> trained.bias.requires_grad = False
        >>> path = os.path.join(tempfile.mkdtemp(), "delta.ckpt")
        >>> ms.save_checkpoint(trained.trainable_params(), path)
        >>> fresh = nn.Dense(3, 2)
        >>> fresh.bias.requires_grad = False
        >>> load_delta_checkpoint(fresh, path)
        DeltaLoadResult(missing=[], unexpected=[])
        >>> bool((fresh.weight.asnumpy() == trained.weight.asnumpy()).all())
        True
    """
    owner = "load_delta_checkpoint"
    if not isinstance(net, nn.Cell):
        raise argument_error(TypeError, owner, "net", "a mindspore.nn.Cell", net)
    check_str(ckpt_file_name, "ckpt_file_name", owner)
    check_bool(strict, "strict", owner)
    if not os.path.isfile(ckpt_file_name):
        raise FileNotFoundError(f"For '{owner}', the checkpoint file '{ckpt_file_name}' does not exist.")
    checkpoint = ms.load_checkpoint(ckpt_file_name, dec_key=dec_key, dec_mode=dec_mode,
                                    format=_checkpoint_format(ckpt_file_name, owner))

    merged_cells = [name for name, cell in net.cells_and_names() if getattr(cell, "merged", False) is True]
    if merged_cells:
        raise ValueError(f"For '{owner}', the cells {merged_cells} are merged; call unmerge() on them before "
                         f"loading a delta, or the old update stays folded into their weights.")
    params_by_name = {param.name: param for param in net.get_parameters()}
    missing = [param.name for param in trained_parameters(net) if param.name not in checkpoint]
    unexpected = [name for name in checkpoint
                  if name not in params_by_name and name not in TRAINING_COUNTER_KEYS]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"trained parameters of the network missing from the file: {missing}")
        if unexpected:
            problems.append(f"entries of the file that are no parameter of the network: {unexpected}")
        message = (f"For '{owner}', '{ckpt_file_name}' does not match the network's trainable parameters; "
                   + "; ".join(problems) + ". Freeze the network as in training before loading.")
        if strict:
            raise ValueError(message + " Pass strict=False to load the matching entries anyway.")
        logger.warning(message)

    matched = [(params_by_name[name], value) for name, value in checkpoint.items() if name in params_by_name]
    for param, value in matched:
        _check_compatible(param, value, ckpt_file_name, owner)
    for param, value in matched:
        param.set_data(value)
    return DeltaLoadResult(missing=missing, unexpected=unexpected)
