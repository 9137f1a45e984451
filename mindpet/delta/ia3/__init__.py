"""(IA)^3: learned rescaling of Dense outputs, or of feed-forward inputs (Liu et al., 2022)."""
from mindpet.delta.base.method import DeltaMethod
from mindpet.delta.ia3.config import IA3Config
from mindpet.delta.ia3.layer import IA3Dense
from mindpet.delta.ia3.peft_format import IA3_FORMAT
from mindpet.injection.hosts import adopt_base_parameters, dense_arguments
from mindpet.injection.targeting import TargetSpec
from mindpet.parallel.derive import dense_strategies


def _is_feedforward(config, path):
    return TargetSpec(config.feedforward_modules).matches(path, is_dense=True)


def _build(host, config, path):
    cell = IA3Dense(feedforward=_is_feedforward(config, path), **dense_arguments(host))
    return adopt_base_parameters(cell, host)


def _added_params(host, config, path):
    # l, and the one-element frozen merge gate.
    return (host.in_channels if _is_feedforward(config, path) else host.out_channels), 1


def _host_strategies(host, cell):
    """``l`` is split like the width it rescales: the input's ``k`` with ``feedforward``, the output's ``mp``
    without."""
    split = host.split
    dp, k, mp = split
    if cell.feedforward:
        ia3 = {"strategy_ia3_gate": ((k,), ()), "strategy_ia3_mul": ((dp, k), (k,))}
    else:
        ia3 = {"strategy_ia3_gate": ((mp,), ()), "strategy_ia3_mul": (split.output, (mp,))}
    return {**dense_strategies(host, cell, "strategy_org_dense_matmul", "strategy_org_bias_add", "strategy_activation"),
            **ia3}


METHOD = DeltaMethod(name="ia3", cell_types=(IA3Dense,), config_class=IA3Config, build=_build,
                     added_params=_added_params, host_strategies=_host_strategies, adapter_format=IA3_FORMAT)

__all__ = ["IA3Config", "IA3Dense", "METHOD"]
