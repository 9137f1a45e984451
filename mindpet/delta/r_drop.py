"""R-Drop: regularized dropout (Liang et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021).

Each sample goes through the network twice, so two different dropout masks give two predictions of one input.
The loss adds to the cross-entropy a symmetric KL divergence that pulls the two predictions together.
:func:`rdrop_repeat` builds the doubled batch and :class:`RDropLoss` computes the loss on it.

Both work in GRAPH_MODE and PYNATIVE_MODE. Argument checks run on constants (shapes, dtypes, ``alpha``), so in
GRAPH_MODE they raise while the graph compiles, with the same error types and messages as in PYNATIVE_MODE. With
dynamic shapes (``Cell.set_inputs``), dimensions unknown at compile time are not checked.
"""
import math
import numbers

from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.ops import constexpr
from mindspore.ops import operations as P

from mindpet.utils.validation import argument_error

_LOSS_OWNER = "RDropLoss"
_REPEAT_OWNER = "rdrop_repeat"
_FLOAT_LOGIT_TYPES = (mstype.float16, mstype.float32)
_CLASS_INDEX_TYPES = (mstype.int32, mstype.int64)
# The paper's per-sample objective is NLL(copy 1) + NLL(copy 2) + alpha/2 * (KL(P1||P2) + KL(P2||P1)). The
# cross-entropy here is a mean over both copies, i.e. that objective halved, so the sum of both KL directions
# is weighted by alpha/4 (the factor MindPet 1.0.4 used as well).
_KL_SUM_DIVISOR = 4.0


@constexpr
def _check_alpha(alpha):
    """Return ``alpha`` as a float: TypeError unless it is an int or float (not bool, not a Tensor)."""
    if isinstance(alpha, Tensor):
        raise TypeError(f"For '{_LOSS_OWNER}', the argument 'alpha' must be an int or a float, but got a Tensor; "
                        f"pass a Python number.")
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool):
        raise argument_error(TypeError, _LOSS_OWNER, "alpha", "an int or a float", alpha)
    if not math.isfinite(alpha) or alpha < 0:
        raise argument_error(ValueError, _LOSS_OWNER, "alpha", "a finite number >= 0", alpha)
    return float(alpha)


def _is_known(dim):
    """Whether a dimension is static; under dynamic shapes, GRAPH mode hands constexpr functions None for it."""
    return dim is not None and dim >= 0


@constexpr
def _check_logits(shape, dtype):
    """TypeError for a non-float16/float32 dtype; ValueError for rank < 2 or an odd batch (when it is static)."""
    if dtype not in _FLOAT_LOGIT_TYPES:
        raise argument_error(TypeError, _LOSS_OWNER, "logits", "a Tensor of dtype float16 or float32", dtype)
    if shape is None:
        return
    if len(shape) < 2:
        raise argument_error(ValueError, _LOSS_OWNER, "logits",
                             "a Tensor of shape (2N, ..., C) with rank >= 2, its last axis the classes", shape)
    if _is_known(shape[0]) and shape[0] % 2 != 0:
        raise argument_error(ValueError, _LOSS_OWNER, "logits",
                             "a Tensor with an even batch size: rows 2i and 2i+1 hold the two copies of sample i, "
                             "as rdrop_repeat lays them out, so its shape", shape)


def _sparse_label_shape_fits(logits_shape, label_shape):
    """One class index per row of logits: ``logits_shape[:-1]``, optionally with a trailing axis of size 1."""
    expected = tuple(logits_shape[:-1])
    label_shape = tuple(label_shape)
    if len(label_shape) == len(expected) + 1 and label_shape[-1] == 1:
        label_shape = label_shape[:-1]
    return len(label_shape) == len(expected) and all(
        not (_is_known(found) and _is_known(wanted)) or found == wanted
        for found, wanted in zip(label_shape, expected))


def _dense_label_shape_fits(logits_shape, label_shape):
    """Class probabilities: the shape of logits, where both dimensions are known."""
    return len(label_shape) == len(logits_shape) and all(
        not (_is_known(found) and _is_known(wanted)) or found == wanted
        for found, wanted in zip(label_shape, logits_shape))


@constexpr
def _labels_are_class_indices(logits_shape, label_shape, label_dtype):
    """Tell sparse labels (class indices) from dense ones (class probabilities) and check their static shape."""
    shapes_known = logits_shape is not None and label_shape is not None
    if label_dtype in _CLASS_INDEX_TYPES:
        if shapes_known and not _sparse_label_shape_fits(logits_shape, label_shape):
            raise argument_error(ValueError, _LOSS_OWNER, "label_ids",
                                 f"class indices of shape {tuple(logits_shape[:-1])}, one per row of logits "
                                 f"{logits_shape} (a trailing axis of size 1 is allowed), so its shape", label_shape)
        return True
    if label_dtype in _FLOAT_LOGIT_TYPES:
        if shapes_known and not _dense_label_shape_fits(logits_shape, label_shape):
            raise argument_error(ValueError, _LOSS_OWNER, "label_ids",
                                 f"class probabilities of the same shape as logits {logits_shape}, so its shape",
                                 label_shape)
        return False
    raise argument_error(TypeError, _LOSS_OWNER, "label_ids",
                         "class indices of dtype int32 or int64, or class probabilities of dtype float16 or float32",
                         label_dtype)


class RDropLoss(nn.Cell):
    r"""Cross-entropy plus the R-Drop consistency term between the two copies of each sample.

    The batch holds every sample twice in a row, as :func:`rdrop_repeat` lays it out: rows ``2i`` and ``2i+1``
    are two dropout passes of sample ``i``. With ``P_i`` and ``Q_i`` the softmax of those two rows over the
    ``C`` classes, and ``N`` samples (``2N`` rows):

    .. math::
        \mathcal{L} = \mathrm{CE} + \frac{\alpha}{4} \cdot \frac{1}{N} \sum_{i=1}^{N}
            \left(\mathrm{KL}(P_i \| Q_i) + \mathrm{KL}(Q_i \| P_i)\right),
        \qquad \mathrm{KL}(P \| Q) = \sum_{c=1}^{C} P_c \log\frac{P_c}{Q_c}

    ``CE`` is ``nn.CrossEntropyLoss()`` (mean over all ``2N`` rows) of the logits and ``label_ids``. The KL terms
    are summed over classes, both directions are added, and the result is averaged over the ``N`` pairs. This is
    the paper's per-sample loss ``NLL(P) + NLL(Q) + alpha/2 * (KL(P||Q) + KL(Q||P))`` divided by two, so
    ``alpha`` means what it means in the paper. Logits of shape ``(2N, ..., C)`` (e.g. one prediction per token)
    pair along the first axis and average over every position of the ``N`` pairs.

    The loss is computed in float32 whatever the logits dtype, and returned as a float32 scalar. Dropout makes
    the two copies differ only while the network is training (``set_train(True)``, which ``Model.train`` does):
    in eval mode the copies are identical, the KL term is 0 and the loss is the plain cross-entropy.

    Inputs:
        - **logits** (Tensor) - unnormalized scores (or log-probabilities) of shape :math:`(2N, C)` or
          :math:`(2N, ..., C)`, float16 or float32, rows paired as :func:`rdrop_repeat` makes them.
        - **label_ids** (Tensor) - either class indices (int32 or int64) of shape :math:`(2N, ...)`, i.e.
          ``logits.shape[:-1]``, optionally with a trailing axis of size 1; or class probabilities (float16 or
          float32) of the same shape as ``logits``. Repeat the labels with the inputs.
        - **alpha** (Union[int, float]) - weight of the consistency term, >= 0. Default: ``4``.

    Outputs:
        Tensor, a float32 scalar.

    Raises:
        TypeError: `alpha` is not an int or float (a bool or a Tensor included); `logits` is not float16 or
            float32; `label_ids` is neither int32/int64 nor float16/float32.
        ValueError: `alpha` is negative or not finite; `logits` has rank < 2 or an odd first dimension;
            `label_ids` does not match the shape of `logits`.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.delta import RDropLoss, rdrop_repeat
        >>> loss_fn = RDropLoss()
        >>> logits = ms.Tensor(np.array([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0],
        ...                              [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]), ms.float32)
        >>> labels = rdrop_repeat(ms.Tensor(np.array([0, 1]), ms.int32))
        >>> labels
        Tensor(shape=[4], dtype=Int32, value= [0, 0, 1, 1])
        >>> round(float(loss_fn(logits, labels, alpha=0)), 4)
        0.4735
        >>> round(float(loss_fn(logits, labels, alpha=4)), 4)
        0.5789
    """

    def __init__(self):
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss()
        self.log_softmax = P.LogSoftmax(axis=-1)
        self.exp = P.Exp()
        self.sub = P.Sub()
        self.mul = P.Mul()
        self.reduce_sum = P.ReduceSum()
        self.reduce_mean = P.ReduceMean()
        self.cast = P.Cast()
        self.reshape = P.Reshape()

    def construct(self, logits, label_ids, alpha=4):
        alpha = _check_alpha(alpha)
        _check_logits(logits.shape, logits.dtype)
        class_indices = _labels_are_class_indices(logits.shape, label_ids.shape, label_ids.dtype)
        num_classes = logits.shape[-1]

        if logits.dtype != mstype.float32:
            logits = self.cast(logits, mstype.float32)
        if class_indices:
            label_ids = self.reshape(label_ids, (-1,))
            if label_ids.dtype != mstype.int32:
                label_ids = self.cast(label_ids, mstype.int32)
        else:
            label_ids = self.reshape(label_ids, (-1, num_classes))
            if label_ids.dtype != mstype.float32:
                label_ids = self.cast(label_ids, mstype.float32)
        ce_loss = self.cross_entropy(self.reshape(logits, (-1, num_classes)), label_ids)

        log_probs = self.log_softmax(logits)
        first_log_probs = log_probs[0::2]
        second_log_probs = log_probs[1::2]
        # KL(P||Q) + KL(Q||P) = sum_c (P_c - Q_c) (log P_c - log Q_c): every term is >= 0, so the sum has no
        # cancellation, and it is exactly 0 when the two copies agree.
        probs_gap = self.sub(self.exp(first_log_probs), self.exp(second_log_probs))
        log_probs_gap = self.sub(first_log_probs, second_log_probs)
        # Summed over the classes, averaged over the N pairs (and over every position of per-token logits).
        kl_per_pair = self.reduce_sum(self.mul(probs_gap, log_probs_gap), -1)
        return ce_loss + self.reduce_mean(kl_per_pair) * (alpha / _KL_SUM_DIVISOR)


@constexpr
def _check_tensor_count(count):
    if count == 0:
        raise TypeError(f"For '{_REPEAT_OWNER}', at least one Tensor must be given, but got none.")


@constexpr
def _raise_not_a_tensor(position, value):
    raise argument_error(TypeError, _REPEAT_OWNER, f"tensors[{position}]", "a Tensor", value)


@constexpr
def _check_has_batch_axis(position, shape):
    # A shape of None is a dynamic rank, unknown while compiling.
    if shape is not None and not shape:
        raise argument_error(ValueError, _REPEAT_OWNER, f"tensors[{position}]",
                             "a Tensor of rank >= 1 (its first axis is the batch), so its shape", shape)


def rdrop_repeat(*tensors):
    """Repeat every row of each tensor twice along axis 0, interleaved: ``[a, b, ...]`` becomes ``[a, a, b, b, ...]``.

    Rows ``2i`` and ``2i+1`` of the result are sample ``i``, the layout :class:`RDropLoss` expects. Repeat the
    labels too, so that they stay aligned with the inputs. Works eagerly and inside a GRAPH_MODE ``construct``,
    for tensors of any dtype (bool masks included).

    Args:
        *tensors (Tensor): one or more tensors of rank >= 1, each with its batch on axis 0.

    Returns:
        Tensor when one tensor is given, tuple of Tensor when several are, each with a first axis twice as long.

    Raises:
        TypeError: no tensor is given, or an argument is not a Tensor.
        ValueError: an argument is a 0-d Tensor (it has no batch axis).

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.delta import rdrop_repeat
        >>> input_ids = ms.Tensor(np.array([[1, 2], [3, 4]]), ms.int32)
        >>> label_ids = ms.Tensor(np.array([0, 1]), ms.int32)
        >>> input_ids, label_ids = rdrop_repeat(input_ids, label_ids)
        >>> print(input_ids)
        [[1 2]
         [1 2]
         [3 4]
         [3 4]]
        >>> print(label_ids)
        [0 0 1 1]
    """
    _check_tensor_count(len(tensors))
    repeated = []
    for position, tensor in enumerate(tensors):
        if not isinstance(tensor, Tensor):
            _raise_not_a_tensor(position, tensor)
        _check_has_batch_axis(position, tensor.shape)
        # Stacking each row next to itself and merging the two axes interleaves the copies. Unlike
        # ops.repeat_interleave, Stack and Reshape accept bool tensors in GRAPH_MODE.
        pairs = ops.stack((tensor, tensor), axis=1)
        repeated.append(ops.reshape(pairs, (-1,) + tensor.shape[1:]))
    if len(repeated) == 1:
        return repeated[0]
    return tuple(repeated)
