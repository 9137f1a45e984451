"""The trainable prefix table that Prefix-Tuning (``prefix``) and P-Tuning v2 (``ptuning2``) share.

Both methods learn a few vectors per attention layer that act as extra keys and values. They differ only in
how many layers one cell serves, whether an MLP reparameterizes the table, and how the result is handed to the
model, so the table, the MLP, the layout and the sharding live here once.
"""
from mindspore import dtype as mstype
from mindspore import nn
from mindspore.common.initializer import Normal
from mindspore.ops import constexpr
from mindspore.ops import operations as P

from mindpet.parallel.plan import DegreePlan, Dim, ShardValidated
from mindpet.parallel.strategy import shard_op
from mindpet.utils.naming import delta_attr_name
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import check_positive_int

# PyTorch's nn.Embedding default, which Prefix-Tuning, P-Tuning v2 and ChatGLM2 trained with: unit-scale rows keep
# the tanh of the MLP away from both zero and saturation.
TABLE_INIT = Normal(sigma=1.0)


@constexpr
def check_call_batch_size(batch_size, owner):
    """Check the ``batch_size`` a prefix cell is called with; runs once at compile time in GRAPH mode."""
    check_positive_int(batch_size, "batch_size", owner)


class PrefixTable(nn.Cell):
    """The trainable prefix rows, held as ``embedding_table``.

    The extra level keeps the key MindPet 1.0.4 gave the P-Tuning v2 table, ``mindpet_delta_ptuning2_embedding.
    embedding_table``, so its delta checkpoints load. The rows are used whole, so no embedding lookup is needed.
    """

    def __init__(self, prefix_length, width, owner):
        super().__init__()
        self.embedding_table = make_parameter(TABLE_INIT, (prefix_length, width), mstype.float32, "embedding_table",
                                              "embedding_table", owner)

    def construct(self):
        return self.embedding_table


class PrefixCore(ShardValidated, nn.Cell):
    r"""Trainable prefix vectors for ``num_layers`` attention layers, laid out as key/value prefixes.

    The table ``mindpet_delta_<method>_embedding.embedding_table`` has one row per prefix position. With
    ``mlp_dim`` the rows pass through ``mindpet_delta_<method>_dense_in`` (``table_dim -> mlp_dim``), tanh and
    ``mindpet_delta_<method>_dense_out`` (``mlp_dim -> 2 * num_layers * num_heads * head_dim``); without it the
    table is used as it is and ``table_dim`` must equal that width. Each row is read as ``2 * num_layers`` blocks of
    ``num_heads * head_dim``, ordered layer by layer with the key before the value (the layout of ChatGLM2 and of
    MindPet 1.0.4's P-Tuning v2).

    :meth:`_key_values` recomputes the prefixes from the parameters on every call, so gradients reach them, and
    returns them as ``(2 * num_layers, batch_size, num_heads, prefix_length, head_dim)``, the same for every sample.
    Dropout is left to the subclass's ``construct``, after this layout, so each sample gets its own dropout mask.

    Args:
        method (str): the delta method that names the parameters, ``'prefix'`` or ``'ptuning2'``.
        prefix_length (int): prefix positions per layer.
        num_layers (int): attention layers served.
        num_heads (int): attention heads.
        head_dim (int): size of one head's key and value.
        table_dim (int): width of a table row.
        mlp_dim (Union[int, None]): hidden size of the reparameterizing MLP; None uses the table directly.
        dropout_rate (float): dropout rate on the prefixes while training.

    Arguments are validated by the subclasses, which know the user-facing names.
    """

    def __init__(self, method, prefix_length, num_layers, num_heads, head_dim, table_dim, mlp_dim, dropout_rate):
        super().__init__()
        self.prefix_length = prefix_length
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.mlp_dim = mlp_dim
        self.use_mlp = mlp_dim is not None
        self._embedding_name = delta_attr_name(method, "embedding")
        self._dense_in_name = delta_attr_name(method, "dense_in")
        self._dense_out_name = delta_attr_name(method, "dense_out")
        key_value_dim = 2 * num_layers * num_heads * head_dim
        setattr(self, self._embedding_name, PrefixTable(prefix_length, table_dim, type(self).__name__))
        if self.use_mlp:
            setattr(self, self._dense_in_name, nn.Dense(table_dim, mlp_dim))
            setattr(self, self._dense_out_name, nn.Dense(mlp_dim, key_value_dim))
        self.tanh = P.Tanh()
        self.reshape = P.Reshape()
        self.transpose = P.Transpose()
        self.expand_dims = P.ExpandDims()
        self.tile = P.Tile()
        self.dropout = nn.Dropout(p=dropout_rate)

    def _key_values(self, batch_size):
        """The prefixes as ``(2 * num_layers, batch_size, num_heads, prefix_length, head_dim)``, before dropout."""
        prefixes = getattr(self, self._embedding_name)()
        if self.use_mlp:
            prefixes = getattr(self, self._dense_in_name)(prefixes)
            prefixes = self.tanh(prefixes)
            prefixes = getattr(self, self._dense_out_name)(prefixes)
        prefixes = self.reshape(prefixes, (self.prefix_length, 2 * self.num_layers, self.num_heads, self.head_dim))
        prefixes = self.transpose(prefixes, (1, 2, 0, 3))
        # The batch is tiled last: the MLP runs once per call, not once per sample.
        prefixes = self.expand_dims(prefixes, 1)
        return self.tile(prefixes, (1, batch_size, 1, 1, 1))

    def _batch_dims(self):
        """The batch axis as known before a call: unknown here, as the batch size comes with each call."""
        return ()

    def _shard_plan(self):
        """``data_parallel`` splits the batch; ``model_parallel`` the heads and the MLP's hidden units.

        The prefix positions and the head size are never split.
        """
        model_dims = (Dim("num_heads", self.num_heads),)
        if self.use_mlp:
            model_dims += (Dim("the MLP hidden size", self.mlp_dim),)
        return DegreePlan({"data_parallel": self._batch_dims(), "model_parallel": model_dims}, self._apply_degrees)

    def _apply_degrees(self, data_parallel, model_parallel):
        """Split the batch over ``data_parallel`` and the heads (and MLP hidden units) over ``model_parallel``."""
        owner = type(self).__name__
        mp, dp = model_parallel, data_parallel
        if self.use_mlp:
            # Megatron-style: dense_in splits its output units, dense_out its input units (then sums the parts).
            dense_in = getattr(self, self._dense_in_name)
            dense_out = getattr(self, self._dense_out_name)
            shard_op(dense_in.matmul, ((1, 1), (mp, 1)), "model_parallel", owner, (2, 2))
            shard_op(dense_in.bias_add, ((1, mp), (mp,)), "model_parallel", owner, (2, 1))
            shard_op(self.tanh, ((1, mp),), "model_parallel", owner, (2,))
            shard_op(dense_out.matmul, ((1, mp), (1, mp)), "model_parallel", owner, (2, 2))
            shard_op(dense_out.bias_add, ((1, 1), (1,)), "model_parallel", owner, (2, 1))
        shard_op(self.transpose, ((1, 1, mp, 1),), "model_parallel", owner, (4,))
        shard_op(self.expand_dims, ((1, mp, 1, 1),), "model_parallel", owner, (4,))
        # Tile splits a tiled axis by dividing its multiple, so the batch axis can be split although the input's is 1.
        shard_op(self.tile, ((1, dp, mp, 1, 1),), "data_parallel", owner, (5,))
        shard_op(self.dropout.dropout, ((1, dp, mp, 1, 1),), "data_parallel", owner, (5,))
