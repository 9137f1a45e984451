"""P-tuning v1: virtual-token embeddings re-parameterised by an MLP or an LSTM (Liu et al., 2021, "GPT Understands,
Too")."""
import math

from mindspore import dtype as mstype
from mindspore import nn
from mindspore.common.initializer import HeUniform, Uniform
from mindspore.ops import operations as P

from mindpet.delta.base.dense_core import DenseCore
from mindpet.delta.base.prefix_core import TABLE_INIT
from mindpet.delta.base.virtual_tokens import VirtualTokenCell
from mindpet.parallel.plan import Dim
from mindpet.parallel.strategy import shard_op
from mindpet.utils.dtype import check_float_dtype
from mindpet.utils.naming import delta_attr_name
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import argument_error, check_positive_int, check_rate, check_str

ENCODER_TYPES = ("MLP", "LSTM")
# PEFT's defaults: two LSTM layers without dropout between them. The MLP has a fixed depth, so they apply to the LSTM.
DEFAULT_LSTM_LAYERS = 2
DEFAULT_LSTM_DROPOUT = 0.0
EMBEDDING_NAME = delta_attr_name("ptuning", "embedding")
LSTM_NAME = delta_attr_name("ptuning", "lstm")
DENSE_IN_NAME = delta_attr_name("ptuning", "dense_in")
DENSE_HIDDEN_NAME = delta_attr_name("ptuning", "dense_hidden")
DENSE_OUT_NAME = delta_attr_name("ptuning", "dense_out")


def check_encoder_arguments(encoder_hidden_size, encoder_reparameterization_type, encoder_num_layers,
                            encoder_dropout, owner):
    """The encoder arguments of :class:`PromptEncoder` checked, the type in capitals.

    Returns:
        tuple of the hidden size, the type (``"MLP"`` or ``"LSTM"``), the LSTM layers and the LSTM dropout.
    """
    encoder_hidden_size = check_positive_int(encoder_hidden_size, "encoder_hidden_size", owner)
    encoder_type = check_str(encoder_reparameterization_type, "encoder_reparameterization_type", owner).upper()
    if encoder_type not in ENCODER_TYPES:
        raise argument_error(ValueError, owner, "encoder_reparameterization_type",
                             f"one of {list(ENCODER_TYPES)} (case-insensitive)", encoder_reparameterization_type)
    encoder_num_layers = check_positive_int(encoder_num_layers, "encoder_num_layers", owner)
    encoder_dropout = check_rate(encoder_dropout, "encoder_dropout", owner)
    if encoder_type == "MLP":
        for arg_name, value, default in (("encoder_num_layers", encoder_num_layers, DEFAULT_LSTM_LAYERS),
                                         ("encoder_dropout", encoder_dropout, DEFAULT_LSTM_DROPOUT)):
            if value != default:
                raise argument_error(ValueError, owner, arg_name, f"{default!r} with the MLP encoder (it applies to "
                                     "the LSTM; the MLP always has three layers and no dropout)", value)
    return encoder_hidden_size, encoder_type, encoder_num_layers, encoder_dropout


def _dense(in_channels, out_channels, param_init_type, compute_dtype):
    """A Dense layer initialised as ``torch.nn.Linear`` is, as the P-tuning encoders were trained."""
    return DenseCore(in_channels, out_channels, weight_init=HeUniform(negative_slope=math.sqrt(5)),
                     bias_init=Uniform(1 / math.sqrt(in_channels)), param_init_type=param_init_type,
                     compute_dtype=compute_dtype)


class PromptEncoder(VirtualTokenCell):
    r"""P-tuning v1: a trainable table of ``num_virtual_tokens`` embeddings passed through an encoder, whose output
    is prepended to every input.

    The encoder couples the virtual tokens, which the P-tuning paper found to train more stably than free embeddings.
    With ``encoder_reparameterization_type="MLP"`` the table ``mindpet_delta_ptuning_embedding`` :math:`E` passes
    through three Dense layers :math:`P = W_3\,\mathrm{relu}(W_2\,\mathrm{relu}(W_1 E + b_1) + b_2) + b_3`
    (``mindpet_delta_ptuning_dense_in``, ``_dense_hidden``, ``_dense_out``; ``token_dim -> encoder_hidden_size ->
    encoder_hidden_size -> token_dim``). With ``"LSTM"`` it passes through a bidirectional LSTM
    (``mindpet_delta_ptuning_lstm``, ``encoder_num_layers`` layers of ``encoder_hidden_size`` units each way, the
    virtual tokens as one sequence) and then :math:`W_3\,\mathrm{relu}(W_2 h + b_2) + b_3` (``_dense_hidden``,
    ``2 * encoder_hidden_size`` wide, and ``_dense_out``). This is the layout of PEFT's ``PromptEncoder``; the table
    starts as a standard normal and the Dense layers as ``torch.nn.Linear``'s default. The encoder runs once per
    call, and :meth:`virtual_token_embeddings` gives its output, the tensor PEFT saves as ``prompt_embeddings``.

    The Dense layers compute in ``compute_dtype``. MindSpore's ``nn.LSTM`` multiplies its parameters as stored, so
    the LSTM computes in ``param_init_type``.

    :meth:`shard` splits the hidden units of the Dense layers over ``model_parallel``, Megatron-style (for the MLP,
    ``encoder_hidden_size`` in ``dense_in`` and ``dense_hidden``; after the LSTM, ``2 * encoder_hidden_size`` in
    ``dense_hidden`` and ``dense_out``). The LSTM is not split: ``nn.LSTM`` runs its recurrence in kernels whose
    primitives it does not expose, so there is no operator to give a strategy; it is replicated.

    Args:
        num_virtual_tokens (int): virtual tokens prepended to every input.
        token_dim (int): their width, the model's embedding width.
        encoder_hidden_size (int): hidden size of the MLP, or of each direction of the LSTM.
        encoder_reparameterization_type (str): ``"MLP"`` or ``"LSTM"``, case-insensitive. Default: ``"MLP"``.
        encoder_num_layers (int): LSTM layers; the MLP accepts only the default. Default: 2.
        encoder_dropout (float): dropout between LSTM layers while training, in [0, 1); the MLP accepts only the
            default. Default: 0.0.
        param_init_type (mindspore.dtype): dtype of the parameters, float32 or float16. Default: float32.
        compute_dtype (mindspore.dtype): dtype of the Dense layers' matmuls, float16 or float32. Default: float16.

    Inputs:
        - **batch_size** (int) - the batch size, e.g. ``input_ids.shape[0]``.
        - **dtype** (mindspore.dtype, optional) - dtype of the output, float16 or float32 (bfloat16 on Ascend).
          Default: ``None``, float32.

    Outputs:
        Tensor of shape :math:`(batch\_size, num\_virtual\_tokens, token\_dim)`, the same rows for every sample.

    Raises:
        TypeError: `num_virtual_tokens`, `token_dim`, `encoder_hidden_size` or `encoder_num_layers` is not an int;
            `encoder_reparameterization_type` is not a str; `encoder_dropout` is not a float (int 0 is accepted);
            a dtype is not a supported float dtype; the call's `batch_size` is not an int or its `dtype` not a
            supported float dtype.
        ValueError: one of those ints or the call's `batch_size` is <= 0; `encoder_reparameterization_type` is
            neither MLP nor LSTM; `encoder_dropout` is outside [0, 1); the MLP is given another `encoder_num_layers`
            or `encoder_dropout` than the default.

    Examples:
        >>> from mindpet.delta import PromptEncoder
        >>> encoder = PromptEncoder(num_virtual_tokens=4, token_dim=8, encoder_hidden_size=16)
        >>> encoder(3).shape
        (3, 4, 8)
        >>> sorted(param.name for param in encoder.trainable_params())[:3]
        ['mindpet_delta_ptuning_dense_hidden.bias', 'mindpet_delta_ptuning_dense_hidden.weight',
         'mindpet_delta_ptuning_dense_in.bias']
        >>> lstm = PromptEncoder(4, 8, 16, encoder_reparameterization_type="LSTM", encoder_num_layers=1)
        >>> lstm.virtual_token_embeddings().shape
        (4, 8)
    """

    def __init__(self, num_virtual_tokens, token_dim, encoder_hidden_size, encoder_reparameterization_type="MLP",
                 encoder_num_layers=DEFAULT_LSTM_LAYERS, encoder_dropout=DEFAULT_LSTM_DROPOUT,
                 param_init_type=mstype.float32, compute_dtype=mstype.float16):
        owner = "PromptEncoder"
        super().__init__(num_virtual_tokens, token_dim, owner)
        (self.encoder_hidden_size, self.encoder_type, self.encoder_num_layers,
         self.encoder_dropout) = check_encoder_arguments(encoder_hidden_size, encoder_reparameterization_type,
                                                         encoder_num_layers, encoder_dropout, owner)
        self.use_lstm = self.encoder_type == "LSTM"
        self.param_init_type = check_float_dtype(param_init_type, "param_init_type", owner)
        self.compute_dtype = check_float_dtype(compute_dtype, "compute_dtype", owner)

        setattr(self, EMBEDDING_NAME, make_parameter(TABLE_INIT, (self.num_virtual_tokens, self.token_dim),
                                                     self.param_init_type, EMBEDDING_NAME, "embedding", owner))
        head_width = self.encoder_hidden_size
        if self.use_lstm:
            setattr(self, LSTM_NAME, nn.LSTM(self.token_dim, self.encoder_hidden_size,
                                             num_layers=self.encoder_num_layers, batch_first=True,
                                             dropout=self.encoder_dropout, bidirectional=True,
                                             dtype=self.param_init_type))
            head_width = 2 * self.encoder_hidden_size
        else:
            setattr(self, DENSE_IN_NAME, _dense(self.token_dim, head_width, param_init_type, compute_dtype))
        setattr(self, DENSE_HIDDEN_NAME, _dense(head_width, head_width, param_init_type, compute_dtype))
        setattr(self, DENSE_OUT_NAME, _dense(head_width, self.token_dim, param_init_type, compute_dtype))
        self.head_width = head_width
        self.relu_in = P.ReLU()
        self.relu_hidden = P.ReLU()
        self.cast = P.Cast()
        self.reshape = P.Reshape()
        self.expand_batch = P.ExpandDims()

    def _to_compute(self, x):
        if x.dtype != self.compute_dtype:
            x = self.cast(x, self.compute_dtype)
        return x

    def _embeddings(self):
        table = getattr(self, EMBEDDING_NAME)
        if self.use_lstm:
            # The virtual tokens are one sequence of a batch of one.
            states, _ = getattr(self, LSTM_NAME)(self.expand_batch(table, 0))
            hidden = self._to_compute(self.reshape(states, (self.num_virtual_tokens, self.head_width)))
        else:
            hidden = self.relu_in(getattr(self, DENSE_IN_NAME)(self._to_compute(table)))
        hidden = self.relu_hidden(getattr(self, DENSE_HIDDEN_NAME)(hidden))
        return getattr(self, DENSE_OUT_NAME)(hidden)

    def _model_parallel_dims(self):
        label = "2 * encoder_hidden_size" if self.use_lstm else "encoder_hidden_size"
        return (Dim(label, self.head_width),)

    def _apply_model_parallel(self, model_parallel):
        """Megatron-style pairs: the first Dense of a pair splits its output units, the second its input units
        (each device then holds a partial sum that the framework adds up)."""
        mp, owner = model_parallel, self.owner
        dense_hidden = getattr(self, DENSE_HIDDEN_NAME)
        dense_out = getattr(self, DENSE_OUT_NAME)
        if self.use_lstm:
            column, row, relu = dense_hidden, dense_out, self.relu_hidden
        else:
            column, row, relu = getattr(self, DENSE_IN_NAME), dense_hidden, self.relu_in
            shard_op(self.relu_hidden, ((1, 1),), "model_parallel", owner, (2,))
            shard_op(dense_out.matmul, ((1, 1), (1, 1)), "model_parallel", owner, (2, 2))
            shard_op(dense_out.bias_add, ((1, 1), (1,)), "model_parallel", owner, (2, 1))
        shard_op(column.matmul, ((1, 1), (mp, 1)), "model_parallel", owner, (2, 2))
        shard_op(column.bias_add, ((1, mp), (mp,)), "model_parallel", owner, (2, 1))
        shard_op(relu, ((1, mp),), "model_parallel", owner, (2,))
        shard_op(row.matmul, ((1, mp), (1, mp)), "model_parallel", owner, (2, 2))
        shard_op(row.bias_add, ((1, 1), (1,)), "model_parallel", owner, (2, 1))

    def extend_repr(self):
        return (f"{super().extend_repr()}, encoder_hidden_size={self.encoder_hidden_size}, "
                f"encoder_reparameterization_type={self.encoder_type!r}, encoder_num_layers={self.encoder_num_layers}, "
                f"encoder_dropout={self.encoder_dropout}, param_init_type={self.param_init_type}, "
                f"compute_dtype={self.compute_dtype}")
