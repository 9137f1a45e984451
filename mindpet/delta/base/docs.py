"""Docstring pieces that several cells share, written once: the Dense arguments and the ``shard()`` contract."""

_DENSE_ARGUMENTS = {
    "{dense_channels}": """\
        in_channels (int): size of the last input dimension.
        out_channels (int): size of the last output dimension.""",
    "{dense_inits}": """\
        weight_init (Union[Tensor, str, Initializer, numbers.Number]): ``weight`` init. Default: ``'normal'``.
        bias_init (Union[Tensor, str, Initializer, numbers.Number]): ``bias`` init. Default: ``'zeros'``.
        has_bias (bool): whether to add ``bias``. Default: ``True``.
        activation (Union[str, Cell, Primitive, None]): activation of the Dense output, e.g. ``'relu'`` or
            ``nn.ReLU()``. Default: ``None``.""",
    "{dense_inputs_outputs}": """\
    Inputs:
        - **x** (Tensor) - shape :math:`(*, in\\_channels)`, rank >= 2.

    Outputs:
        Tensor of shape :math:`(*, out\\_channels)` and the dtype of ``x``.""",
    "{layer_inputs_outputs}": """\
    Inputs:
        - **x** (Tensor) - shape :math:`(*, hidden\\_size)`, rank >= 2.

    Outputs:
        Tensor of the shape and dtype of ``x``.""",
    "{dtypes}": """\
        param_init_type (mindspore.dtype): dtype of the parameters, float32 or float16. Default: float32.
        compute_dtype (mindspore.dtype): dtype of the matmuls, float16 or float32. Default: float16.""",
}

# The Dense part of a ``*Dense`` adapter cell, in its ``shard()`` arguments.
DENSE_SHARD_ARGUMENTS = """
            strategy_matmul_org (tuple): ``x (N, in) @ weight (out, in)^T``, e.g. ``((dp, mp), (1, mp))``: the
                contracted ``in`` axis split ``mp``-way, the output ``(N, out)`` laid out ``(dp, 1)``.
            strategy_bias_org (tuple): ``+ bias``, e.g. ``((dp, 1), (1,))``.
            strategy_activation_org (tuple): the Dense activation input's layout, e.g. ``((dp, 1),)``."""


# What the Dense form of an adapter ties in its shard() contract.
DENSE_ADAPTER_TIED = ("``N`` or ``out_channels`` unlike an earlier strategy (the adapter is added back to the Dense "
                      "output)")


def with_dense_arguments(cls):
    """Class decorator: put the shared Dense argument descriptions where the docstring says ``{dense_channels}``,
    ``{dense_inits}``, ``{dtypes}``, ``{dense_inputs_outputs}`` and ``{layer_inputs_outputs}`` (an adapter inserted
    after a layer)."""
    for marker, text in _DENSE_ARGUMENTS.items():
        cls.__doc__ = cls.__doc__.replace(marker, text)
    return cls


def shard_doc(arguments, sizes, tied):
    """The docstring of a cell's ``shard()``.

    Args:
        arguments (str): the ``Args:`` entries, one per strategy argument, each starting on a new line.
        sizes (str): the lengths a split must divide, e.g. ``"``in_channels``, ``lora_rank``"``.
        tied (str): what must be split alike across operators, and why, e.g.
            ``"``N`` or ``out_channels`` unlike an earlier strategy (the branch is added to the Dense output)"``.
    """
    return f"""Set the parallel strategy of each operator (used in semi-auto and auto parallel mode).

        Every strategy is a tuple with one layout per operator input, as for ``mindspore.ops.Primitive.shard``;
        None leaves that operator to the framework (strategies set by an earlier call stay). Inputs are 2-D (leading
        dimensions are flattened into ``N``). The strategies are checked together, with those of earlier calls,
        before any is applied; see :mod:`mindpet.parallel.plan` for the rules. A strategy for a bias or an
        activation the cell does not have is ignored with a warning, as MindPet 1.0.4 did.

        Args:{arguments}

        Returns:
            The cell itself.

        Raises:
            ValueError: a strategy is not a tuple of tuples of positive ints, has the wrong number of layouts for
                its operator or a layout of the wrong length; splits an axis unlike itself across the operator's
                inputs (e.g. a matmul's contracted axis) or into unequal parts ({sizes}); splits {tied}; takes an
                operator's output in another layout than the operator produces; or needs a device count that does
                not divide the one set in a semi-auto or auto parallel context.
        """
