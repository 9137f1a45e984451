"""Low-rank adapters (Compacter-style, Mahabadi et al., 2021): bottleneck adapters whose projections are products
of rank-``low_rank_size`` factors."""
from mindpet.delta.base.method import DeltaMethod
from mindpet.delta.low_rank_adapter.config import LowRankAdapterConfig
from mindpet.delta.low_rank_adapter.layer import LowRankAdapterDense, LowRankAdapterLayer
from mindpet.injection.hosts import adopt_base_parameters, dense_arguments
from mindpet.parallel.derive import dense_strategies


def _build(host, config, path):
    cell = LowRankAdapterDense(reduction_factor=config.reduction_factor, low_rank_size=config.low_rank_size,
                               low_rank_w_init=config.low_rank_w_init, non_linearity=config.non_linearity,
                               **dense_arguments(host))
    return adopt_base_parameters(cell, host)


def _added_params(host, config, path):
    width, rank = host.out_channels, config.low_rank_size
    bottleneck = width // config.reduction_factor
    return 2 * rank * (width + bottleneck) + bottleneck + width, 0


def _host_strategies(host, cell):
    """The factors of the down-projection ``(out, bottleneck)`` split its rows like the Dense output, those of the
    up-projection ``(bottleneck, out)`` its columns; the bottleneck itself stays unsplit."""
    dp, _, mp = host.split
    return {**dense_strategies(host, cell, "strategy_matmul_org", "strategy_bias_org", "strategy_activation_org"),
            "strategy_matmul_down_sampler_weight": ((mp, 1), (1, 1)),
            "strategy_matmul_down_sampler_input": ((dp, mp), (mp, 1)),
            "strategy_bias_down_sampler": ((dp, 1), (1,)),
            "strategy_non_linearity": ((dp, 1),),
            "strategy_matmul_up_sampler_weight": ((1, 1), (1, mp)),
            "strategy_matmul_up_sampler_input": ((dp, 1), (1, mp)),
            "strategy_bias_up_sampler": ((dp, mp), (mp,)),
            "strategy_residual_add": ((dp, mp), (dp, mp))}


METHOD = DeltaMethod(name="low_rank_adapter", cell_types=(LowRankAdapterDense, LowRankAdapterLayer),
                     config_class=LowRankAdapterConfig, build=_build, added_params=_added_params,
                     host_strategies=_host_strategies)

__all__ = ["LowRankAdapterConfig", "LowRankAdapterDense", "LowRankAdapterLayer", "METHOD"]
