"""P-Tuning v2: trainable key and value prefixes for every attention layer of a model (Liu et al., 2022)."""
from mindspore.ops import constexpr
from mindspore.ops import operations as P

from mindpet.delta.base.prefix_core import PrefixCore, check_call_batch_size
from mindpet.parallel.strategy import shard_op
from mindpet.utils.dtype import check_float_dtype
from mindpet.utils.validation import check_bool, check_positive_int, check_rate


@constexpr
def _check_call_dtype(dtype):
    """Check the ``dtype`` PrefixEncoder is called with; runs once at compile time in GRAPH mode."""
    check_float_dtype(dtype, "dtype", "PrefixEncoder")


class PrefixEncoder(PrefixCore):
    r"""The prefixes of P-Tuning v2: trainable key and value prefixes for every attention layer of a model.

    The model owns one encoder, calls it once per step with the batch size and hands layer ``i`` its part of the
    result. The trainable table ``mindpet_delta_ptuning2_embedding.embedding_table`` has ``pre_seq_len`` rows of
    ``num_layers * 2 * num_heads * kv_channels``. With ``prefix_projection`` the rows first pass through an MLP,
    ``mindpet_delta_ptuning2_dense_in`` (to ``projection_dim``), tanh and ``mindpet_delta_ptuning2_dense_out`` (back
    to the row width), as in ChatGLM2. Each row holds, layer by layer, the layer's key prefix then its value prefix,
    each ``num_heads`` heads of ``kv_channels``.

    The prefixes are recomputed from the parameters on every call, so they train, and every sample in the batch gets
    the same ones (dropout, when ``dropout_prob > 0``, draws its own mask per sample while training).

    Args:
        pre_seq_len (int): prefix positions per layer.
        num_layers (int): attention layers of the model.
        num_heads (int): attention heads (key/value heads for grouped-query attention).
        kv_channels (int): size of one head's key and value.
        prefix_projection (bool): whether an MLP reparameterizes the table. Default: ``False``.
        projection_dim (int): hidden size of that MLP; checked only when ``prefix_projection`` is ``True``.
            Default: 512.
        dropout_prob (float): dropout rate on the prefixes while training, in [0, 1). Default: 0.0.

    Inputs:
        - **batch_size** (int) - the batch size, e.g. ``input_ids.shape[0]``.
        - **dtype** (mindspore.dtype, optional) - dtype of the outputs, float16 or float32 (bfloat16 on Ascend).
          Default: ``None``, float32 like the parameters.

    Outputs:
        Tuple of ``num_layers`` Tensors, one per layer, each of shape
        :math:`(2, batch\_size, num\_heads, pre\_seq\_len, kv\_channels)`: the key prefix at index 0, the value
        prefix at index 1. :class:`mindpet.delta.prefix_attention.PrefixConcat` prepends one to a layer's key and
        value and extends its attention mask.

    Raises:
        TypeError: ``pre_seq_len``, ``num_layers``, ``num_heads``, ``kv_channels`` or (with projection)
            ``projection_dim`` is not an int; ``prefix_projection`` is not a bool; ``dropout_prob`` is not a float
            (int 0 is accepted); the call's ``batch_size`` is not an int; its ``dtype`` is not a supported float type.
        ValueError: one of those ints, or the call's ``batch_size``, is <= 0 or above 2**31 - 1; ``dropout_prob`` is
            outside [0, 1).

    Examples:
        >>> import mindspore as ms
        >>> from mindpet.delta import PrefixEncoder
        >>> encoder = PrefixEncoder(pre_seq_len=4, num_layers=3, num_heads=2, kv_channels=8)
        >>> layer_prefixes = encoder(5)
        >>> len(layer_prefixes), layer_prefixes[0].shape
        (3, (2, 5, 2, 4, 8))
        >>> [param.name for param in encoder.trainable_params()]
        ['mindpet_delta_ptuning2_embedding.embedding_table']
        >>> projected = PrefixEncoder(4, 3, 2, 8, prefix_projection=True, projection_dim=16)
        >>> sorted(param.name for param in projected.trainable_params())
        ['mindpet_delta_ptuning2_dense_in.bias', 'mindpet_delta_ptuning2_dense_in.weight',
         'mindpet_delta_ptuning2_dense_out.bias', 'mindpet_delta_ptuning2_dense_out.weight',
         'mindpet_delta_ptuning2_embedding.embedding_table']
        >>> projected(2, ms.float16)[0].dtype
        mindspore.float16
    """

    def __init__(self, pre_seq_len, num_layers, num_heads, kv_channels, prefix_projection=False, projection_dim=512,
                 dropout_prob=0.0):
        owner = "PrefixEncoder"
        pre_seq_len = check_positive_int(pre_seq_len, "pre_seq_len", owner)
        num_layers = check_positive_int(num_layers, "num_layers", owner)
        num_heads = check_positive_int(num_heads, "num_heads", owner)
        kv_channels = check_positive_int(kv_channels, "kv_channels", owner)
        prefix_projection = check_bool(prefix_projection, "prefix_projection", owner)
        if prefix_projection:
            projection_dim = check_positive_int(projection_dim, "projection_dim", owner)
        dropout_prob = check_rate(dropout_prob, "dropout_prob", owner)
        super().__init__("ptuning2", prefix_length=pre_seq_len, num_layers=num_layers, num_heads=num_heads,
                         head_dim=kv_channels, table_dim=num_layers * 2 * num_heads * kv_channels,
                         mlp_dim=projection_dim if prefix_projection else None, dropout_rate=dropout_prob)
        self.pre_seq_len = pre_seq_len
        self.kv_channels = kv_channels
        self.prefix_projection = prefix_projection
        self.projection_dim = projection_dim
        self.dropout_prob = dropout_prob
        self.cast = P.Cast()
        self.split_layers = P.Split(axis=0, output_num=num_layers)

    def construct(self, batch_size, dtype=None):
        check_call_batch_size(batch_size, "PrefixEncoder")
        prefixes = self.dropout(self._key_values(batch_size))
        if dtype is not None:
            _check_call_dtype(dtype)
            prefixes = self.cast(prefixes, dtype)
        return self.split_layers(prefixes)

    def shard(self, data_parallel=1, model_parallel=1):
        """Split the prefixes' batch axis over ``data_parallel`` devices and their heads over ``model_parallel``.

        Used in semi-auto and auto parallel mode; elsewhere it changes nothing. With ``prefix_projection`` the MLP's
        hidden units are split over ``model_parallel`` too. The call's batch size must be a multiple of
        ``data_parallel``.

        Args:
            data_parallel (int): data-parallel devices. Default: 1.
            model_parallel (int): model-parallel devices; must divide ``num_heads`` (and ``projection_dim`` with
                projection). Default: 1.

        Returns:
            The cell itself.

        Raises:
            TypeError: ``data_parallel`` or ``model_parallel`` is not an int.
            ValueError: either is <= 0; ``model_parallel`` does not divide ``num_heads`` (or ``projection_dim``);
                or, when a semi-auto or auto parallel context gives the device count,
                ``data_parallel * model_parallel`` does not divide it.
        """
        return self._accept_strategies({"data_parallel": data_parallel, "model_parallel": model_parallel})

    def _apply_degrees(self, data_parallel, model_parallel):
        super()._apply_degrees(data_parallel, model_parallel)
        layout = ((1, data_parallel, model_parallel, 1, 1),)
        shard_op(self.cast, layout, "data_parallel", type(self).__name__, (5,))
        shard_op(self.split_layers, layout, "data_parallel", type(self).__name__, (5,))

    def extend_repr(self):
        return (f"pre_seq_len={self.pre_seq_len}, num_layers={self.num_layers}, num_heads={self.num_heads}, "
                f"kv_channels={self.kv_channels}, prefix_projection={self.prefix_projection}, "
                f"projection_dim={self.projection_dim}, dropout_prob={self.dropout_prob}")
