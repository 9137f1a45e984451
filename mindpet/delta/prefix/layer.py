"""Prefix-Tuning: trainable key and value prefixes for one attention block (Li & Liang, 2021)."""
from mindpet.delta.base.prefix_core import PrefixCore, check_call_batch_size
from mindpet.parallel.plan import Dim
from mindpet.utils.validation import argument_error, check_positive_int, check_rate


class PrefixLayer(PrefixCore):
    r"""Trainable key and value prefixes for one attention block (Prefix-Tuning).

    A table of ``prefix_length = prefix_token_num // batch_size`` trainable vectors of size ``embed_dim``
    (``mindpet_delta_prefix_embedding.embedding_table``) goes through an MLP: ``mindpet_delta_prefix_dense_in``
    (``embed_dim -> mid_dim``), tanh and ``mindpet_delta_prefix_dense_out`` (``mid_dim -> 2 * hidden_dim``):

    .. math::
        [K_p \; V_p] = \tanh(E W_{in}^T + b_{in}) W_{out}^T + b_{out}

    The first ``hidden_dim`` output columns are the key prefix :math:`K_p`, the last ``hidden_dim`` the value prefix
    :math:`V_p`, each split into ``num_heads`` heads of ``head_dim = hidden_dim // num_heads``. The cell recomputes
    them from its parameters on every call, so they train; every sample in the batch gets the same prefixes.
    Dropout (``dropout_rate``) applies to them while training.

    The output plugs into an attention block whose key and value are ``(batch, num_heads, seq, head_dim)``: prepend
    ``output[0]`` to the key and ``output[1]`` to the value along the sequence axis and extend the attention mask
    so every query sees the prefix; :class:`mindpet.delta.prefix_attention.PrefixConcat` does all three.

    Args:
        prefix_token_num (int): prefix tokens for the whole batch, as in MindPet; a multiple of ``batch_size``.
            Each sample gets ``prefix_token_num // batch_size`` prefix positions.
        batch_size (int): the training batch size, the default batch size of a call.
        num_heads (int): attention heads of the block.
        hidden_dim (int): the block's ``num_heads * head_dim``; a multiple of ``num_heads``.
        embed_dim (int): size of the trainable prefix vectors, the MLP's input.
        mid_dim (int): hidden size of the MLP. Default: 512.
        dropout_rate (float): dropout rate on the prefixes while training, in [0, 1). Default: 0.1.

    Inputs:
        - **batch_size** (int, optional) - the batch size of this call, e.g. ``key.shape[0]``. Default: the
          constructor's ``batch_size``.

    Outputs:
        Tensor of shape :math:`(2, batch\_size, num\_heads, prefix\_length, head\_dim)`, float32: the key prefix at
        index 0 and the value prefix at index 1. It is the layout of one layer of
        :class:`mindpet.delta.ptuning2.PrefixEncoder`, so the same attention code serves both methods.

    Raises:
        TypeError: ``prefix_token_num``, ``batch_size``, ``num_heads``, ``hidden_dim``, ``embed_dim`` or ``mid_dim``
            is not an int; ``dropout_rate`` is not a float (int 0 is accepted); the call's ``batch_size`` is not an
            int.
        ValueError: one of those ints, or the call's ``batch_size``, is <= 0 or above 2**31 - 1;
            ``prefix_token_num`` is not a multiple of ``batch_size``; ``hidden_dim`` is not a multiple of
            ``num_heads``; ``dropout_rate`` is outside [0, 1).

    Examples:
        >>> from mindpet.delta import PrefixLayer
        >>> prefix = PrefixLayer(prefix_token_num=8, batch_size=2, num_heads=4, hidden_dim=32, embed_dim=16,
        ...                      mid_dim=24)
        >>> prefix_key_value = prefix()
        >>> prefix_key_value.shape
        (2, 2, 4, 4, 8)
        >>> prefix(5).shape
        (2, 5, 4, 4, 8)
        >>> bool((prefix_key_value[0] != prefix_key_value[1]).any())
        True
        >>> sorted(param.name for param in prefix.trainable_params())
        ['mindpet_delta_prefix_dense_in.bias', 'mindpet_delta_prefix_dense_in.weight',
         'mindpet_delta_prefix_dense_out.bias', 'mindpet_delta_prefix_dense_out.weight',
         'mindpet_delta_prefix_embedding.embedding_table']
    """

    def __init__(self, prefix_token_num, batch_size, num_heads, hidden_dim, embed_dim, mid_dim=512,
                 dropout_rate=0.1):
        owner = "PrefixLayer"
        prefix_token_num = check_positive_int(prefix_token_num, "prefix_token_num", owner)
        batch_size = check_positive_int(batch_size, "batch_size", owner)
        num_heads = check_positive_int(num_heads, "num_heads", owner)
        hidden_dim = check_positive_int(hidden_dim, "hidden_dim", owner)
        embed_dim = check_positive_int(embed_dim, "embed_dim", owner)
        mid_dim = check_positive_int(mid_dim, "mid_dim", owner)
        dropout_rate = check_rate(dropout_rate, "dropout_rate", owner)
        if prefix_token_num % batch_size:
            raise argument_error(ValueError, owner, "prefix_token_num", f"a multiple of batch_size ({batch_size})",
                                 prefix_token_num)
        if hidden_dim % num_heads:
            raise argument_error(ValueError, owner, "hidden_dim", f"a multiple of num_heads ({num_heads})",
                                 hidden_dim)
        super().__init__("prefix", prefix_length=prefix_token_num // batch_size, num_layers=1, num_heads=num_heads,
                         head_dim=hidden_dim // num_heads, table_dim=embed_dim, mlp_dim=mid_dim,
                         dropout_rate=dropout_rate)
        self.prefix_token_num = prefix_token_num
        self.batch_size = batch_size
        self.hidden_dim = hidden_dim
        self.embed_dim = embed_dim
        self.mid_dim = mid_dim
        self.dropout_rate = dropout_rate

    def construct(self, batch_size=None):
        if batch_size is None:
            batch_size = self.batch_size
        check_call_batch_size(batch_size, "PrefixLayer")
        return self.dropout(self._key_values(batch_size))

    @property
    def past_key_reparam(self):
        """The key prefix ``(batch_size, num_heads, prefix_length, head_dim)`` computed now, without dropout.

        A snapshot for inspection, as in MindPet; it does not follow later training steps and carries no gradient.
        Inside ``construct`` call the cell instead (``self.prefix(key.shape[0])[0]``).
        """
        return self._key_values(self.batch_size)[0]

    @property
    def past_value_reparam(self):
        """The value prefix ``(batch_size, num_heads, prefix_length, head_dim)`` computed now, without dropout.

        A snapshot for inspection, as in MindPet; it does not follow later training steps and carries no gradient.
        Inside ``construct`` call the cell instead (``self.prefix(key.shape[0])[1]``).
        """
        return self._key_values(self.batch_size)[1]

    def shard(self, data_parallel=1, model_parallel=1):
        """Split the prefixes' batch axis over ``data_parallel`` devices and their heads over ``model_parallel``.

        Used in semi-auto and auto parallel mode; elsewhere it changes nothing. The MLP's hidden units are split
        over ``model_parallel`` too, and the call's batch size must be a multiple of ``data_parallel``.

        Args:
            data_parallel (int): data-parallel devices; must divide ``batch_size``. Default: 1.
            model_parallel (int): model-parallel devices; must divide ``num_heads`` and ``mid_dim``. Default: 1.

        Returns:
            The cell itself.

        Raises:
            TypeError: ``data_parallel`` or ``model_parallel`` is not an int.
            ValueError: either is <= 0; ``data_parallel`` does not divide ``batch_size``; ``model_parallel`` does
                not divide ``num_heads`` and ``mid_dim``; or, when a semi-auto or auto parallel context gives the
                device count, ``data_parallel * model_parallel`` does not divide it.
        """
        return self._accept_strategies({"data_parallel": data_parallel, "model_parallel": model_parallel})

    def _batch_dims(self):
        return (Dim("batch_size", self.batch_size),)

    def extend_repr(self):
        return (f"prefix_token_num={self.prefix_token_num}, batch_size={self.batch_size}, "
                f"num_heads={self.num_heads}, hidden_dim={self.hidden_dim}, embed_dim={self.embed_dim}, "
                f"mid_dim={self.mid_dim}, dropout_rate={self.dropout_rate}")
