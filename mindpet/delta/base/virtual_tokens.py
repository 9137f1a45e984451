"""What prompt tuning (``prompt_tuning``) and P-tuning v1 (``ptuning``) share: virtual tokens for the input.

Both methods learn ``num_virtual_tokens`` vectors of the model's embedding width that are prepended to the embedded
input, with the attention mask widened to attend them. They differ only in how the vectors are produced (a table, or
a table passed through an encoder), so the call contract, the tiling to the batch, the sharding of that tiling and
the prepending helper live here once.
"""
import numpy as np
from mindspore import Tensor
from mindspore import dtype as mstype
from mindspore import nn, ops
from mindspore.ops import constexpr
from mindspore.ops import operations as P

from mindpet.delta.base.prefix_core import check_call_batch_size
from mindpet.parallel.plan import DegreePlan, Dim, ShardValidated
from mindpet.parallel.strategy import shard_op
from mindpet.utils.dtype import check_float_dtype
from mindpet.utils.validation import argument_error, check_positive_int

# The mask dtypes prepend_virtual_tokens accepts: 0/1 masks as models build them (bool, int or float).
_MASK_TYPES = (mstype.bool_, mstype.int32, mstype.int64, mstype.float16, mstype.float32, mstype.bfloat16)
_EMBEDS_TYPES = (mstype.float16, mstype.float32, mstype.bfloat16)
# A size only 1 divides: the cell has no operator that ``model_parallel`` could split.
_NOTHING_TO_SPLIT = Dim("the operators model_parallel can split (this cell has none)", 1)


@constexpr
def check_call_dtype(dtype, owner):
    """Check the output ``dtype`` a virtual-token cell is called with; runs once at compile time in GRAPH mode."""
    check_float_dtype(dtype, "dtype", owner)


class VirtualTokenCell(ShardValidated, nn.Cell):
    r"""The base of the virtual-token cells: ``num_virtual_tokens`` vectors of width ``token_dim``, per sample.

    A subclass computes the vectors once per call in :meth:`_embeddings` (shape ``(num_virtual_tokens,
    token_dim)``); ``construct`` casts them to the requested dtype and repeats them over the batch, the MLP or LSTM
    running once per call, not once per sample. A subclass with operators of its own to split adds them in
    :meth:`_model_parallel_dims` and :meth:`_apply_model_parallel`.

    Args:
        num_virtual_tokens (int): virtual tokens prepended to every input.
        token_dim (int): their width, the model's embedding width.
        owner (str): the public cell named in error messages.
    """

    def __init__(self, num_virtual_tokens, token_dim, owner):
        super().__init__()
        self.owner = owner
        self.num_virtual_tokens = check_positive_int(num_virtual_tokens, "num_virtual_tokens", owner)
        self.token_dim = check_positive_int(token_dim, "token_dim", owner)
        self.output_cast = P.Cast()
        self.expand_dims = P.ExpandDims()
        self.tile = P.Tile()

    def _embeddings(self):
        """The virtual-token embeddings ``(num_virtual_tokens, token_dim)``, recomputed from the parameters."""
        raise NotImplementedError(f"{type(self).__name__} must compute its embeddings in _embeddings().")

    def construct(self, batch_size, dtype=None):
        check_call_batch_size(batch_size, self.owner)
        embeds = self._embeddings()
        if dtype is None:
            dtype = mstype.float32
        check_call_dtype(dtype, self.owner)
        if embeds.dtype != dtype:
            embeds = self.output_cast(embeds, dtype)
        return self.tile(self.expand_dims(embeds, 0), (batch_size, 1, 1))

    def virtual_token_embeddings(self):
        """The virtual-token embeddings as the model sees them, ``(num_virtual_tokens, token_dim)`` float32.

        For P-tuning this is the encoder's output, the tensor PEFT saves as ``prompt_embeddings``. It is computed
        as in evaluation (no dropout) and outside any graph, whatever the cell's training state.

        Returns:
            Tensor of shape :math:`(num\\_virtual\\_tokens, token\\_dim)`, float32.
        """
        was_training = self.training
        self.set_train(False)
        try:
            embeds = self._embeddings()
        finally:
            self.set_train(was_training)
        return embeds.astype(mstype.float32)

    def shard(self, data_parallel=1, model_parallel=1):
        """Split the output's batch axis over ``data_parallel`` devices, and any encoder over ``model_parallel``.

        Used in semi-auto and auto parallel mode; elsewhere it changes nothing. The call's batch size must be a
        multiple of ``data_parallel``. What ``model_parallel`` splits is the cell's own (see its class docstring);
        a cell with nothing to split accepts only 1.

        Args:
            data_parallel (int): data-parallel devices. Default: 1.
            model_parallel (int): model-parallel devices. Default: 1.

        Returns:
            The cell itself.

        Raises:
            TypeError: ``data_parallel`` or ``model_parallel`` is not an int.
            ValueError: either is <= 0; ``model_parallel`` does not divide the sizes it splits; or, when a
                semi-auto or auto parallel context gives the device count, ``data_parallel * model_parallel`` does
                not divide it.
        """
        return self._accept_strategies({"data_parallel": data_parallel, "model_parallel": model_parallel})

    def _model_parallel_dims(self):
        """The sizes ``model_parallel`` splits; a cell without an encoder splits nothing, so only 1 is accepted."""
        return (_NOTHING_TO_SPLIT,)

    def _shard_plan(self):
        return DegreePlan({"data_parallel": (), "model_parallel": self._model_parallel_dims()}, self._apply_degrees)

    def _apply_model_parallel(self, model_parallel):
        """Split the subclass's encoder operators ``model_parallel``-way."""

    def _apply_degrees(self, data_parallel, model_parallel):
        self._apply_model_parallel(model_parallel)
        # Tile splits a tiled axis by dividing its multiple, so the batch axis can be split although the input's is 1.
        shard_op(self.tile, ((data_parallel, 1, 1),), "data_parallel", self.owner, (3,))

    def extend_repr(self):
        return f"num_virtual_tokens={self.num_virtual_tokens}, token_dim={self.token_dim}"


def prepend_virtual_tokens(inputs_embeds, attention_mask, virtual_embeds):
    r"""Prepend virtual-token embeddings to embedded inputs, and widen the attention mask to attend them.

    The result is what the model's embedding output would be for an input that began with ``num_virtual_tokens``
    extra tokens: ``inputs_embeds`` becomes ``concat(virtual_embeds, inputs_embeds)`` along the sequence axis and
    ``attention_mask`` gains ``num_virtual_tokens`` leading ones, in its own dtype. Shapes are checked when the
    function is traced, so in GRAPH mode at compile time. Call it in ``construct`` or outside a graph.

    Args:
        inputs_embeds (Tensor): the embedded input, float, shape :math:`(batch, seq\_length, token\_dim)`.
        attention_mask (Tensor): 1 (or True) for positions to attend, shape :math:`(batch, seq\_length)`, bool, int or
            float.
        virtual_embeds (Tensor): the output of :class:`~mindpet.delta.PromptTuningEmbedding` or
            :class:`~mindpet.delta.PromptEncoder`, shape :math:`(batch, num\_virtual\_tokens, token\_dim)`; it is
            cast to the dtype of ``inputs_embeds``.

    Returns:
        Tuple of two Tensors: the embeddings :math:`(batch, num\_virtual\_tokens + seq\_length, token\_dim)` in the
        dtype of ``inputs_embeds``, and the mask :math:`(batch, num\_virtual\_tokens + seq\_length)` in the dtype
        of ``attention_mask``.

    Raises:
        TypeError: an argument is not a Tensor, or not of the dtypes above.
        ValueError: ``inputs_embeds`` or ``virtual_embeds`` is not 3-D, ``attention_mask`` not 2-D, or their batch
            sizes, widths or sequence lengths do not agree.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.delta import PromptTuningEmbedding, prepend_virtual_tokens
        >>> prompt = PromptTuningEmbedding(num_virtual_tokens=3, token_dim=8)
        >>> inputs_embeds = ms.Tensor(np.zeros((2, 5, 8), np.float32))
        >>> attention_mask = ms.Tensor(np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]), ms.int32)
        >>> embeds, mask = prepend_virtual_tokens(inputs_embeds, attention_mask, prompt(2))
        >>> embeds.shape, mask.dtype
        ((2, 8, 8), mindspore.int32)
        >>> mask.asnumpy()
        array([[1, 1, 1, 1, 1, 1, 1, 1],
               [1, 1, 1, 1, 1, 1, 0, 0]], dtype=int32)
    """
    _check_are_tensors(isinstance(inputs_embeds, Tensor), isinstance(attention_mask, Tensor),
                       isinstance(virtual_embeds, Tensor))
    _check_layouts(inputs_embeds.shape, inputs_embeds.dtype, attention_mask.shape, attention_mask.dtype,
                   virtual_embeds.shape, virtual_embeds.dtype)
    if virtual_embeds.dtype != inputs_embeds.dtype:
        virtual_embeds = ops.cast(virtual_embeds, inputs_embeds.dtype)
    ones = ops.ones((attention_mask.shape[0], virtual_embeds.shape[1]), attention_mask.dtype)
    return ops.concat((virtual_embeds, inputs_embeds), 1), ops.concat((ones, attention_mask), 1)


@constexpr
def _check_are_tensors(inputs_embeds_is_tensor, attention_mask_is_tensor, virtual_embeds_is_tensor):
    """The type check of :func:`prepend_virtual_tokens`; in GRAPH mode the arguments are Tensors and it is free."""
    for arg_name, is_tensor in (("inputs_embeds", inputs_embeds_is_tensor),
                                ("attention_mask", attention_mask_is_tensor),
                                ("virtual_embeds", virtual_embeds_is_tensor)):
        if not is_tensor:
            raise TypeError(f"For 'prepend_virtual_tokens', the argument '{arg_name}' must be a Tensor, but got a "
                            f"value of another type.")


@constexpr
def _check_layouts(embeds_shape, embeds_dtype, mask_shape, mask_dtype, virtual_shape, virtual_dtype):
    """The shape and dtype checks of :func:`prepend_virtual_tokens`; at compile time in GRAPH mode."""
    owner = "prepend_virtual_tokens"
    for arg_name, dtype, dtypes, what in (("inputs_embeds", embeds_dtype, _EMBEDS_TYPES, "float"),
                                          ("attention_mask", mask_dtype, _MASK_TYPES, "bool, int or float"),
                                          ("virtual_embeds", virtual_dtype, _EMBEDS_TYPES, "float")):
        if dtype not in dtypes:
            raise argument_error(TypeError, owner, arg_name, f"a {what} Tensor", f"a Tensor of dtype {dtype}")
    for arg_name, shape, rank in (("inputs_embeds", embeds_shape, 3), ("attention_mask", mask_shape, 2),
                                  ("virtual_embeds", virtual_shape, 3)):
        if len(shape) != rank:
            raise argument_error(ValueError, owner, arg_name, f"a {rank}-D Tensor", f"shape {shape}")
    if tuple(mask_shape) != tuple(embeds_shape[:2]):
        raise argument_error(ValueError, owner, "attention_mask",
                             f"of shape (batch, seq_length) = {tuple(embeds_shape[:2])} like 'inputs_embeds'",
                             f"shape {mask_shape}")
    if virtual_shape[0] != embeds_shape[0] or virtual_shape[2] != embeds_shape[2]:
        raise argument_error(ValueError, owner, "virtual_embeds",
                             f"of shape (batch, num_virtual_tokens, token_dim) with batch {embeds_shape[0]} and "
                             f"token_dim {embeds_shape[2]} like 'inputs_embeds'", f"shape {virtual_shape}")


def virtual_token_ids(token_ids, num_virtual_tokens):
    """``token_ids`` repeated or cut to ``num_virtual_tokens`` entries, as PEFT fits an init text to the prompt.

    A longer list keeps its first ``num_virtual_tokens`` ids; a shorter one is repeated whole as often as needed
    and the repetition cut at ``num_virtual_tokens``.
    """
    repeats = -(-num_virtual_tokens // len(token_ids))
    return (list(token_ids) * repeats)[:num_virtual_tokens]


def embedding_rows(embedding, token_ids, token_dim, owner):
    """The float32 rows of ``embedding`` (an ``nn.Embedding`` or a 2-D Tensor table) for ``token_ids``.

    Raises:
        TypeError: ``embedding`` is neither; ``token_ids`` is not a list or tuple of ints.
        ValueError: the table is not 2-D or not ``token_dim`` wide; ``token_ids`` is empty or has an id outside
            the table.
    """
    if isinstance(embedding, nn.Embedding):
        table = embedding.embedding_table
    elif isinstance(embedding, Tensor):
        table = embedding
    else:
        raise argument_error(TypeError, owner, "embedding", "a mindspore.nn.Embedding or a 2-D Tensor table",
                             embedding)
    if len(table.shape) != 2 or table.shape[1] != token_dim:
        raise argument_error(ValueError, owner, "embedding", f"a table of shape (vocab_size, token_dim={token_dim})",
                             f"a table of shape {tuple(table.shape)}")
    vocab_size = table.shape[0]
    if not isinstance(token_ids, (list, tuple)) or not all(
            isinstance(token_id, (int, np.integer)) and not isinstance(token_id, bool) for token_id in token_ids):
        raise argument_error(TypeError, owner, "init_token_ids", "a list or tuple of ints", token_ids)
    if not token_ids:
        raise argument_error(ValueError, owner, "init_token_ids", "a non-empty list", token_ids)
    outside = [int(token_id) for token_id in token_ids if not 0 <= token_id < vocab_size]
    if outside:
        raise argument_error(ValueError, owner, "init_token_ids", f"ids in [0, {vocab_size}) (rows of 'embedding')",
                             outside)
    rows = table.astype(mstype.float32).asnumpy()[np.asarray(token_ids, dtype=np.int64)]
    return rows
