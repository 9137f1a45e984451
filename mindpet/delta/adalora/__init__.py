"""AdaLoRA: LoRA in SVD form whose rank budget is reallocated by importance during training (Zhang et al., ICLR
2023). The cell and config, the training cell that tracks importance in the graph, the orthogonality penalty, the
allocator callback, and PEFT's adapter-file layout."""
from mindpet.delta.adalora.callback import AdaLoraCallback
from mindpet.delta.adalora.config import AdaLoraConfig
from mindpet.delta.adalora.layer import AdaLoRADense, truncate_adalora
from mindpet.delta.adalora.peft_format import ADALORA_FORMAT
from mindpet.delta.adalora.train import AdaLoraOrthogonalLoss, AdaLoraTrainOneStepCell, adalora_cells
from mindpet.delta.base.method import DeltaMethod
from mindpet.injection.hosts import adopt_base_parameters, dense_arguments
from mindpet.parallel.derive import dense_strategies


def _build(host, config, path):
    cell = AdaLoRADense(init_r=config.init_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                        lora_rank=config.rank_of(path), **dense_arguments(host))
    return adopt_base_parameters(cell, host)


def _host_strategies(host, cell):
    """As LoRA's: the branch input split like the Dense input, ``P`` only along the contracted width, ``Q`` like
    ``W``; the singular values and the mask are not split."""
    split = host.split
    dp, k, mp = split
    return {**dense_strategies(host, cell, "strategy_org_dense_matmul", "strategy_org_bias_add", "strategy_activation"),
            "strategy_mask_mul": ((1, 1), (1, 1)),
            "strategy_singular_mul": ((1, k), (1, 1)),
            "strategy_lora_dropout": ((dp, k),),
            "strategy_lora_p_matmul": ((dp, k), (1, k)),
            "strategy_lora_q_matmul": ((dp, 1), (mp, 1)),
            "strategy_lora_mul": (split.output, ()),
            "strategy_lora_add": (split.output, split.output)}


def _added_params(host, config, path):
    rank = config.rank_of(path)
    # P, E and Q train; the rank mask and the one-element branch scale are frozen.
    return rank * (host.in_channels + host.out_channels + 1), rank + 1


METHOD = DeltaMethod(name="adalora", cell_types=(AdaLoRADense,), config_class=AdaLoraConfig, build=_build,
                     added_params=_added_params, host_strategies=_host_strategies, adapter_format=ADALORA_FORMAT)

__all__ = ["AdaLoRADense", "AdaLoraCallback", "AdaLoraConfig", "AdaLoraOrthogonalLoss", "AdaLoraTrainOneStepCell",
           "METHOD", "adalora_cells", "truncate_adalora"]
