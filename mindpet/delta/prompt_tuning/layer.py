"""Prompt tuning: a table of trainable virtual-token embeddings prepended to the input (Lester et al., 2021)."""
from mindspore import Tensor
from mindspore import dtype as mstype

from mindpet.delta.base.prefix_core import TABLE_INIT
from mindpet.delta.base.virtual_tokens import VirtualTokenCell, embedding_rows, virtual_token_ids
from mindpet.utils.dtype import check_float_dtype
from mindpet.utils.naming import delta_attr_name
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import argument_error

EMBEDDING_NAME = delta_attr_name("prompt_tuning", "embedding")


class PromptTuningEmbedding(VirtualTokenCell):
    r"""Prompt tuning: ``num_virtual_tokens`` trainable embeddings that are prepended to every input.

    The table ``mindpet_delta_prompt_tuning_embedding`` :math:`(num\_virtual\_tokens, token\_dim)` is the whole
    delta: the model stays frozen, and :func:`~mindpet.delta.prepend_virtual_tokens` puts the rows in front of the
    embedded input. Initialisation is random (a standard normal, as PEFT's ``RANDOM``), or, with ``init_token_ids``
    and ``embedding``, the rows of the model's word-embedding table for those ids (PEFT's ``TEXT``: the token ids of
    a task description, kept to the first ``num_virtual_tokens`` if longer, repeated whole and cut if shorter).

    Nothing here can be split by ``model_parallel`` (a table lookup has no operator to split); :meth:`shard` splits
    the output's batch axis.

    Args:
        num_virtual_tokens (int): virtual tokens prepended to every input.
        token_dim (int): their width, the model's embedding width.
        init_token_ids (list[int], optional): token ids whose embeddings initialise the table; needs `embedding`.
            Default: ``None``, random initialisation.
        embedding (Union[mindspore.nn.Embedding, Tensor], optional): the model's word embeddings, or their table
            :math:`(vocab\_size, token\_dim)`; needs `init_token_ids`. Default: ``None``.
        param_init_type (mindspore.dtype): dtype of the table, float32 or float16. Default: float32.

    Inputs:
        - **batch_size** (int) - the batch size, e.g. ``input_ids.shape[0]``.
        - **dtype** (mindspore.dtype, optional) - dtype of the output, float16 or float32 (bfloat16 on Ascend).
          Default: ``None``, float32.

    Outputs:
        Tensor of shape :math:`(batch\_size, num\_virtual\_tokens, token\_dim)`, the same rows for every sample.

    Raises:
        TypeError: `num_virtual_tokens` or `token_dim` is not an int; `init_token_ids` is not a list or tuple of ints;
            `embedding` is neither an ``nn.Embedding`` nor a Tensor; `param_init_type` is not a supported float
            dtype; the call's `batch_size` is not an int or its `dtype` not a supported float dtype.
        ValueError: `num_virtual_tokens`, `token_dim` or the call's `batch_size` is <= 0; only one of
            `init_token_ids` and `embedding` is given; `init_token_ids` is empty or holds an id outside the table;
            the table is not :math:`(vocab\_size, token\_dim)`.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet.delta import PromptTuningEmbedding
        >>> word_embeddings = nn.Embedding(100, 8)
        >>> prompt = PromptTuningEmbedding(5, 8, init_token_ids=[7, 3], embedding=word_embeddings)
        >>> prompt(2).shape
        (2, 5, 8)
        >>> [param.name for param in prompt.trainable_params()]
        ['mindpet_delta_prompt_tuning_embedding']
        >>> table = word_embeddings.embedding_table.asnumpy()
        >>> bool(np.array_equal(prompt.virtual_token_embeddings().asnumpy(), table[[7, 3, 7, 3, 7]]))
        True
    """

    def __init__(self, num_virtual_tokens, token_dim, init_token_ids=None, embedding=None,
                 param_init_type=mstype.float32):
        owner = "PromptTuningEmbedding"
        super().__init__(num_virtual_tokens, token_dim, owner)
        self.param_init_type = check_float_dtype(param_init_type, "param_init_type", owner)
        if init_token_ids is None and embedding is not None:
            raise argument_error(ValueError, owner, "init_token_ids", "given when 'embedding' is (the ids of the rows "
                                 "to initialise from)", init_token_ids)
        if init_token_ids is not None and embedding is None:
            raise argument_error(ValueError, owner, "embedding", "given when 'init_token_ids' is (the table to take "
                                 "their rows from)", embedding)
        init = TABLE_INIT
        if init_token_ids is not None:
            rows = embedding_rows(embedding, init_token_ids, self.token_dim, owner)
            init = Tensor(rows[virtual_token_ids(range(len(rows)), self.num_virtual_tokens)])
        setattr(self, EMBEDDING_NAME, make_parameter(init, (self.num_virtual_tokens, self.token_dim),
                                                     self.param_init_type, EMBEDDING_NAME, "embedding", owner))

    def _embeddings(self):
        return getattr(self, EMBEDDING_NAME)

    def extend_repr(self):
        return f"{super().extend_repr()}, param_init_type={self.param_init_type}"
