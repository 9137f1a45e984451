"""Bottleneck adapters (Houlsby et al., 2019). The MindPet manual documents the low-rank adapter under this path as
well, so ``mindpet.delta.adapter.LowRankAdapterLayer`` and ``LowRankAdapterDense`` are the low-rank cells."""
from mindpet.delta.adapter.config import AdapterConfig
from mindpet.delta.adapter.layer import AdapterDense, AdapterLayer
from mindpet.delta.base.method import DeltaMethod
from mindpet.delta.low_rank_adapter.layer import LowRankAdapterDense, LowRankAdapterLayer
from mindpet.injection.hosts import adopt_base_parameters, dense_arguments
from mindpet.parallel.derive import dense_strategies


def _build(host, config, path):
    cell = AdapterDense(bottleneck_size=config.bottleneck_size, non_linearity=config.non_linearity,
                        **dense_arguments(host))
    return adopt_base_parameters(cell, host)


def _added_params(host, config, path):
    width, bottleneck = host.out_channels, config.bottleneck_size
    return 2 * width * bottleneck + bottleneck + width, 0


def _host_strategies(host, cell):
    """The adapter reads the Dense output ``(dp, mp)``, reduces over its width into an unsplit bottleneck, and
    projects back to the output's layout."""
    dp, _, mp = host.split
    return {**dense_strategies(host, cell, "strategy_matmul_org", "strategy_bias_org", "strategy_activation_org"),
            "strategy_matmul_down_sampler": ((dp, mp), (1, mp)),
            "strategy_bias_down_sampler": ((dp, 1), (1,)),
            "strategy_non_linearity": ((dp, 1),),
            "strategy_matmul_up_sampler": ((dp, 1), (mp, 1)),
            "strategy_bias_up_sampler": ((dp, mp), (mp,)),
            "strategy_residual_add": ((dp, mp), (dp, mp))}


METHOD = DeltaMethod(name="adapter", cell_types=(AdapterDense, AdapterLayer), config_class=AdapterConfig,
                     build=_build, added_params=_added_params, host_strategies=_host_strategies)

__all__ = ["AdapterConfig", "AdapterDense", "AdapterLayer", "LowRankAdapterDense", "LowRankAdapterLayer", "METHOD"]
