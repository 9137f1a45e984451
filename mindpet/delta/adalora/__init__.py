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


def _build(host, config, path):
    cell = AdaLoRADense(init_r=config.init_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                        lora_rank=config.rank_of(path), **dense_arguments(host))
    return adopt_base_parameters(cell, host)


def _added_params(host, config, path):
    rank = config.rank_of(path)
    # P, E and Q train; the rank mask and the one-element branch scale are frozen.
    return rank * (host.in_channels + host.out_channels + 1), rank + 1


METHOD = DeltaMethod(name="adalora", cell_types=(AdaLoRADense,), config_class=AdaLoraConfig, build=_build,
                     added_params=_added_params, adapter_format=ADALORA_FORMAT)

__all__ = ["AdaLoRADense", "AdaLoraCallback", "AdaLoraConfig", "AdaLoraOrthogonalLoss", "AdaLoraTrainOneStepCell",
           "METHOD", "adalora_cells", "truncate_adalora"]
