"""LoRA: low-rank adaptation of Dense layers (Hu et al., 2021), with the rsLoRA scale and DoRA's magnitude as options
of the same cell and config. ``mindpet.delta.lora.LoRADense`` is the MindPet manual's import path."""
from mindpet.delta.base.method import DeltaMethod
from mindpet.delta.lora.config import LoraConfig
from mindpet.delta.lora.layer import LoRADense
from mindpet.delta.lora.peft_format import LORA_FORMAT
from mindpet.injection.hosts import adopt_base_parameters, dense_arguments
from mindpet.injection.targeting import pattern_value
from mindpet.parallel.derive import dense_strategies


def _rank_and_alpha(config, path):
    return (pattern_value(config.rank_pattern, path, config.lora_rank),
            pattern_value(config.alpha_pattern, path, config.lora_alpha))


def _build(host, config, path):
    rank, alpha = _rank_and_alpha(config, path)
    cell = LoRADense(lora_rank=rank, lora_alpha=alpha, lora_dropout=config.lora_dropout,
                     use_rslora=config.use_rslora, use_dora=config.use_dora, **dense_arguments(host))
    cell = adopt_base_parameters(cell, host)
    if config.use_dora:
        # The magnitude was computed from the placeholder weight; the host's own weight is in place now.
        cell.init_dora_magnitude()
    return cell


def _added_params(host, config, path):
    rank, _ = _rank_and_alpha(config, path)
    trainable = rank * (host.in_channels + host.out_channels)
    # The branch scale is a one-element frozen Parameter.
    if not config.use_dora:
        return trainable, 1
    # DoRA trains a magnitude per output row and keeps a frozen merge gate and merge factor beside the scale.
    return trainable + host.out_channels, 2 + host.out_channels


def _host_strategies(host, cell):
    """The branch input is split like the Dense input, ``A`` only along the contracted width, ``B`` like ``W``."""
    split = host.split
    dp, k, mp = split
    return {**dense_strategies(host, cell, "strategy_org_dense_matmul", "strategy_org_bias_add", "strategy_activation"),
            "strategy_lora_dropout": ((dp, k),),
            "strategy_lora_a_matmul": ((dp, k), (1, k)),
            "strategy_lora_b_matmul": ((dp, 1), (mp, 1)),
            "strategy_lora_mul": (split.output, ()),
            "strategy_lora_add": (split.output, split.output),
            **(_dora_strategies(split) if cell.use_dora else {})}


def _dora_strategies(split):
    """The row norms of ``W + s B A`` are taken in ``W``'s layout ``(mp, k)``; the factor is split like the output
    width; the bias is added to the rescaled sum as the host added it to its product."""
    dp, k, mp = split
    return {"strategy_dora_weight_matmul": ((mp, 1), (1, k)),
            "strategy_dora_weight_mul": ((mp, k), ()),
            "strategy_dora_weight_add": ((mp, k), (mp, k)),
            "strategy_dora_norm": ((mp, k),),
            "strategy_dora_div": ((mp,), (mp,)),
            "strategy_dora_gate": ((mp,), ()),
            "strategy_dora_mul": (split.output, (mp,))}


METHOD = DeltaMethod(name="lora", cell_types=(LoRADense,), config_class=LoraConfig, build=_build,
                     added_params=_added_params, host_strategies=_host_strategies,
                     adapter_format=LORA_FORMAT)

__all__ = ["LoRADense", "LoraConfig", "METHOD"]
