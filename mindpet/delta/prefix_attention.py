"""Putting prefixes into an attention block: prepend them to the key and value and widen the attention mask."""
import numbers

from mindspore import Tensor, nn, ops
from mindspore.ops import constexpr
from mindspore.ops import operations as P

from mindpet.parallel.plan import DegreePlan, ShardValidated
from mindpet.parallel.strategy import shard_op
from mindpet.utils.validation import argument_error, check_finite_number

_OWNER = "PrefixConcat"


def _shape_error(arg_name, expected, shape):
    """The message shape of ``argument_error``, for a Tensor described by its shape."""
    return ValueError(f"For '{_OWNER}', the argument '{arg_name}' must be {expected}, but got a Tensor of shape "
                      f"{shape}.")


@constexpr
def _check_key_value_shapes(key_shape, value_shape, prefix_shape):
    """Check key, value and prefix shapes against each other; runs once at compile time in GRAPH mode."""
    if len(key_shape) != 4:
        raise _shape_error("key", "a Tensor of shape (batch, num_heads, seq_length, head_dim)", key_shape)
    if value_shape != key_shape:
        raise _shape_error("value", f"a Tensor of the key's shape {key_shape}", value_shape)
    batch, num_heads, _, head_dim = key_shape
    if len(prefix_shape) != 5 or prefix_shape[0] != 2 or prefix_shape[1:3] != (batch, num_heads) \
            or prefix_shape[4] != head_dim:
        raise _shape_error("prefix_key_value",
                           f"a Tensor of shape (2, {batch}, {num_heads}, prefix_length, {head_dim}) to match the key",
                           prefix_shape)


@constexpr
def _check_mask_shape(mask_shape, key_shape):
    """Check the attention mask against the key; runs once at compile time in GRAPH mode."""
    batch, num_heads, seq_length, _ = key_shape
    rank_3 = len(mask_shape) == 3 and mask_shape[0] in (1, batch)
    rank_4 = len(mask_shape) == 4 and mask_shape[0] in (1, batch) and mask_shape[1] in (1, num_heads)
    if not (rank_3 or rank_4) or mask_shape[-1] != seq_length:
        raise _shape_error("attention_mask",
                           f"a Tensor of shape (batch, query_length, {seq_length}) or (batch, heads, query_length, "
                           f"{seq_length}) with batch {batch} or 1 and heads {num_heads} or 1", mask_shape)


class PrefixConcat(ShardValidated, nn.Cell):
    r"""Prepend prefix keys and values to an attention block's key and value, and widen its mask to match.

    Every Prefix-Tuning or P-Tuning v2 attention block needs these three steps; this cell does them with checked
    shapes. The prefix comes first on the sequence axis, and the mask gets ``prefix_length`` new leading columns
    filled with ``attend_value``, so every query, including under a causal mask, sees every prefix position. The
    prefixes are cast to the key's dtype.

    Mask convention: the mask holds ``attend_value`` where a query may look. The default, 1, fits masks with
    1 = attend and 0 = masked (MindPet's examples, MindSpore's BERT and GPT-2). Pass ``attend_value=0`` for
    additive masks (0 = attend, a large negative number = masked) and for masks with 1 (or True) = masked, such as
    ChatGLM2's.

    Args:
        attend_value (Union[int, float]): the mask value meaning "may attend". Default: 1.

    Inputs:
        - **key** (Tensor) - shape :math:`(batch, num\_heads, seq\_length, head\_dim)`.
        - **value** (Tensor) - the key's shape.
        - **prefix_key_value** (Tensor) - :math:`(2, batch, num\_heads, prefix\_length, head\_dim)`: the key prefix
          at index 0, the value prefix at index 1, as returned by :class:`mindpet.delta.prefix_layer.PrefixLayer`
          and by each layer of :class:`mindpet.delta.ptuning2.PrefixEncoder`.
        - **attention_mask** (Tensor, optional) - :math:`(batch, query\_length, seq\_length)` or
          :math:`(batch, heads, query\_length, seq\_length)`, where batch and heads may be 1 for a broadcast mask.
          Any dtype. Default: ``None``.

    Outputs:
        Tuple of 3 Tensors:

        - **key** - :math:`(batch, num\_heads, prefix\_length + seq\_length, head\_dim)`.
        - **value** - the same shape.
        - **attention_mask** - the mask with :math:`prefix\_length` more columns,
          :math:`(\ldots, query\_length, prefix\_length + seq\_length)`, in its dtype; ``None`` when no mask came.

    Raises:
        TypeError: ``attend_value`` is not an int or float; an input is not a Tensor (e.g. ``None`` or a NumPy
            array), raised at compile time in GRAPH mode.
        ValueError: ``attend_value`` is NaN or infinite; the key is not 4-D; the value's shape differs from the
            key's; ``prefix_key_value`` does not match the key's batch, heads and head size; the mask is not 3-D or
            4-D or does not match the key.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.delta import PrefixEncoder
        >>> from mindpet.delta import PrefixConcat
        >>> key = ms.Tensor(np.ones((2, 4, 6, 8)), ms.float32)
        >>> value = ms.Tensor(np.ones((2, 4, 6, 8)), ms.float32)
        >>> causal_mask = ms.Tensor(np.tril(np.ones((6, 6)))[None, None], ms.float32)
        >>> prefix_key_value = PrefixEncoder(pre_seq_len=3, num_layers=1, num_heads=4, kv_channels=8)(2)[0]
        >>> key, value, mask = PrefixConcat()(key, value, prefix_key_value, causal_mask)
        >>> key.shape, value.shape, mask.shape
        ((2, 4, 9, 8), (2, 4, 9, 8), (1, 1, 6, 9))
        >>> print(mask.asnumpy()[0, 0, :2])
        [[1. 1. 1. 1. 0. 0. 0. 0. 0.]
         [1. 1. 1. 1. 1. 0. 0. 0. 0.]]
    """

    def __init__(self, attend_value=1):
        super().__init__()
        if not isinstance(attend_value, numbers.Real) or isinstance(attend_value, bool):
            raise argument_error(TypeError, _OWNER, "attend_value", "an int or a float", attend_value)
        # The mask value is kept as given (an int stays an int, for integer masks); only NaN and inf are refused.
        check_finite_number(attend_value, "attend_value", _OWNER)
        self.attend_value = attend_value
        self.cast = P.Cast()
        self.unstack = P.Unstack(axis=0)
        self.key_concat = P.Concat(axis=2)
        self.value_concat = P.Concat(axis=2)
        # One concat per mask rank, so each can carry a strategy of its rank.
        self.mask_concat_3d = P.Concat(axis=-1)
        self.mask_concat_4d = P.Concat(axis=-1)

    def _check_input(self, tensor, arg_name):
        """TypeError unless the input is a Tensor; evaluated at compile time in GRAPH mode."""
        if not isinstance(tensor, Tensor):
            raise TypeError(f"For '{_OWNER}', the input '{arg_name}' must be a mindspore Tensor, but got "
                            f"{type(tensor).__name__}.")

    def construct(self, key, value, prefix_key_value, attention_mask=None):
        self._check_input(key, "key")
        self._check_input(value, "value")
        self._check_input(prefix_key_value, "prefix_key_value")
        if attention_mask is not None:
            self._check_input(attention_mask, "attention_mask")
        _check_key_value_shapes(key.shape, value.shape, prefix_key_value.shape)
        if attention_mask is not None:
            _check_mask_shape(attention_mask.shape, key.shape)
        if prefix_key_value.dtype != key.dtype:
            prefix_key_value = self.cast(prefix_key_value, key.dtype)
        prefix_key, prefix_value = self.unstack(prefix_key_value)
        key = self.key_concat((prefix_key, key))
        value = self.value_concat((prefix_value, value))
        if attention_mask is None:
            return key, value, attention_mask
        prefix_columns = ops.fill(attention_mask.dtype, attention_mask.shape[:-1] + prefix_key.shape[2:3],
                                  self.attend_value)
        if len(attention_mask.shape) == 3:
            attention_mask = self.mask_concat_3d((prefix_columns, attention_mask))
        else:
            attention_mask = self.mask_concat_4d((prefix_columns, attention_mask))
        return key, value, attention_mask

    def shard(self, data_parallel=1, model_parallel=1):
        """Split the batch over ``data_parallel`` devices and the heads over ``model_parallel``.

        Used in semi-auto and auto parallel mode; elsewhere it changes nothing. The mask's batch axis is split too,
        so under data parallelism pass a mask with the full batch, not a broadcast batch of 1.

        Args:
            data_parallel (int): data-parallel devices. Default: 1.
            model_parallel (int): model-parallel devices; must divide the number of heads. Default: 1.

        Returns:
            The cell itself.

        Raises:
            TypeError: ``data_parallel`` or ``model_parallel`` is not an int.
            ValueError: either is <= 0; or, when a semi-auto or auto parallel context gives the device count,
                ``data_parallel * model_parallel`` does not divide it. The batch and head counts are known only
                when the cell is called, so they are not checked here.
        """
        return self._accept_strategies({"data_parallel": data_parallel, "model_parallel": model_parallel})

    def _shard_plan(self):
        return DegreePlan({"data_parallel": (), "model_parallel": ()}, self._apply_degrees)

    def _apply_degrees(self, data_parallel, model_parallel):
        dp, mp = data_parallel, model_parallel
        shard_op(self.cast, ((1, dp, mp, 1, 1),), "data_parallel", _OWNER, (5,))
        shard_op(self.unstack, ((1, dp, mp, 1, 1),), "data_parallel", _OWNER, (5,))
        shard_op(self.key_concat, ((dp, mp, 1, 1), (dp, mp, 1, 1)), "data_parallel", _OWNER, (4, 4))
        shard_op(self.value_concat, ((dp, mp, 1, 1), (dp, mp, 1, 1)), "data_parallel", _OWNER, (4, 4))
        shard_op(self.mask_concat_3d, ((dp, 1, 1), (dp, 1, 1)), "data_parallel", _OWNER, (3, 3))
        shard_op(self.mask_concat_4d, ((dp, 1, 1, 1), (dp, 1, 1, 1)), "data_parallel", _OWNER, (4, 4))

    def extend_repr(self):
        return f"attend_value={self.attend_value}"
