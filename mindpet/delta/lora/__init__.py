"""LoRA: low-rank adaptation of Dense layers (Hu et al., 2021). ``mindpet.delta.lora.LoRADense`` is the MindPet
manual's import path."""
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
    cell = LoRADense(lora_rank=rank, lora_alpha=alpha, lora_dropout=config.lora_dropout, **dense_arguments(host))
    return adopt_base_parameters(cell, host)


def _added_params(host, config, path):
    rank, _ = _rank_and_alpha(config, path)
    # The branch scale is a one-element frozen Parameter.
    return rank * (host.in_channels + host.out_channels), 1


def _host_strategies(host, cell):
    """The branch input is split like the Dense input, ``A`` only along the contracted width, ``B`` like ``W``."""
    split = host.split
    dp, k, mp = split
    return {**dense_strategies(host, cell, "strategy_org_dense_matmul", "strategy_org_bias_add", "strategy_activation"),
            "strategy_lora_dropout": ((dp, k),),
            "strategy_lora_a_matmul": ((dp, k), (1, k)),
            "strategy_lora_b_matmul": ((dp, 1), (mp, 1)),
            "strategy_lora_mul": (split.output, ()),
            "strategy_lora_add": (split.output, split.output)}


METHOD = DeltaMethod(name="lora", cell_types=(LoRADense,), config_class=LoraConfig, build=_build,
                     added_params=_added_params, host_strategies=_host_strategies,
                     adapter_format=LORA_FORMAT)

__all__ = ["LoRADense", "LoraConfig", "METHOD"]
