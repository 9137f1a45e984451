"""Strategies for an injected cell, derived from those already set on the layer it replaces.

A Dense-like layer's matmul ``x (N, in) @ W (out, in)^T`` is laid out by one strategy ``((dp, k), (mp, k))``: the
batch split ``dp``-way, the contracted input width ``k``-way and the output width ``mp``-way. Every operator of a
delta branch follows from those three numbers; each method turns them into its ``shard()`` arguments, which the
cell then validates like any user-given strategy.
"""
from typing import NamedTuple


class DenseSplit(NamedTuple):
    """The split of a Dense-like matmul: ``dp`` (batch), ``k`` (input width) and ``mp`` (output width)."""
    dp: int
    k: int
    mp: int

    @classmethod
    def from_matmul(cls, strategy):
        """Read ``((dp, k), (mp, k))`` (a ``transpose_b`` matmul); None, or another form, gives None."""
        if not (isinstance(strategy, tuple) and len(strategy) == 2
                and all(isinstance(layout, tuple) and len(layout) == 2 for layout in strategy)):
            return None
        (dp, k), (mp, _) = strategy
        return cls(dp, k, mp)

    @property
    def matmul(self):
        """The matmul strategy itself, ``((dp, k), (mp, k))``."""
        return (self.dp, self.k), (self.mp, self.k)

    @property
    def output(self):
        """The layout of the matmul's output ``(N, out)``: ``(dp, mp)``."""
        return self.dp, self.mp

    @property
    def bias_add(self):
        """A bias add on the output: ``((dp, mp), (mp,))``."""
        return self.output, (self.mp,)


def dense_strategies(host, cell, matmul_arg, bias_arg, activation_arg):
    """The ``shard()`` arguments of ``cell``'s own Dense part from the layer ``host`` it replaces (a
    :class:`~mindpet.injection.hosts.HostView` with a ``split``): the host's matmul, its bias add (derived when the
    host had none set), and the activation on the output; arguments for parts the cell lacks are left out."""
    split = host.split
    strategies = {matmul_arg: split.matmul}
    if cell.has_bias:
        strategies[bias_arg] = host.bias_strategy or split.bias_add
    if cell.activation_flag:
        strategies[activation_arg] = (split.output,)
    return strategies
