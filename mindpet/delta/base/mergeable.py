"""The base of every delta Dense cell whose update can be folded into the frozen weight for inference."""
import numpy as np
from mindspore import Parameter, Tensor, nn

from mindpet.delta.base.dense_core import DenseCore
from mindpet.utils.logger import logger


class MergeableDense(DenseCore):
    """A :class:`DenseCore` with a delta that :meth:`merge` folds into ``weight`` (and ``bias``) and
    :meth:`unmerge` takes out again.

    A subclass says how its delta changes the base parameters in :meth:`_fold` (float32 NumPy arrays in, float32
    NumPy arrays out) and switches its branch off or on in :meth:`_set_branch_active`, which must act through a
    Parameter so that a graph compiled before the merge stays correct after it. :meth:`merged` reads that state
    back. :func:`mindpet.merge_and_unload` and the training guards work through this class for every method.
    """

    @property
    def merged(self):
        """Whether the delta is currently folded into the base parameters."""
        raise NotImplementedError(f"{type(self).__name__} must say whether it is merged.")

    def _fold(self, weight, bias, unfold):
        """The base ``weight`` and ``bias`` (float32 arrays; ``bias`` None without one) with the delta folded in,
        or taken out when ``unfold``. Returns ``(weight, bias)``."""
        raise NotImplementedError(f"{type(self).__name__} must describe how its delta folds into the weight.")

    def _set_branch_active(self, active):
        raise NotImplementedError(f"{type(self).__name__} must switch its branch through a Parameter.")

    def _apply_fold(self, unfold):
        weight = self.weight.asnumpy().astype(np.float32)
        bias = self.bias.asnumpy().astype(np.float32) if self.has_bias else None
        weight, bias = self._fold(weight, bias, unfold)
        self.weight.set_data(Tensor(weight, self.weight.dtype))
        if self.has_bias:
            self.bias.set_data(Tensor(bias, self.bias.dtype))

    def merge(self):
        """Fold the delta into the base parameters (accumulated in float32) and switch the branch off.

        The output stays the same within rounding: float32 rounding (1e-5 of the largest output) with
        ``compute_dtype=float32``, float16 rounding (2e-3) with float16. Call :meth:`unmerge` before training again:
        while merged, the delta parameters receive no gradient (:class:`~mindpet.checkpoint.TrainingGuard` reports
        it). Merging a merged cell logs a warning and does nothing.

        Returns:
            The cell itself.

        Raises:
            ValueError: the base weight is quantized: folding the delta into 4-bit storage would re-quantize it
                and lose the delta in the rounding; :func:`mindpet.merge_and_unload` returns a dequantized layer.
        """
        if self.weight_quantized:
            raise ValueError(f"For '{self.cls_name}.merge', the base weight is quantized "
                             f"({self.weight.quantization_info()['quant_type']}) and cannot hold the delta without "
                             f"re-quantizing it; use mindpet.merge_and_unload, which returns a dequantized Dense layer.")
        if self.merged:
            logger.warning("%s is already merged; merge() did nothing.", self.cls_name)
            return self
        self._apply_fold(unfold=False)
        self._set_branch_active(False)
        return self

    def unmerge(self):
        """Take the delta out of the base parameters again and switch the branch back on.

        Unmerging a cell that is not merged logs a warning and does nothing.

        Returns:
            The cell itself.
        """
        if not self.merged:
            logger.warning("%s is not merged; unmerge() did nothing.", self.cls_name)
            return self
        self._apply_fold(unfold=True)
        self._set_branch_active(True)
        return self

    def _dequantized_merge(self):
        """The weight dequantized with the delta folded in, and the bias, as new Parameters of
        ``param_init_type`` (the dtype the base was quantized from); the cell itself is left as it was."""
        weight, bias = self._fold(self.base_weight_array(), self.bias.asnumpy().astype(np.float32)
                                  if self.has_bias else None, unfold=False)
        logger.info("%s: the base weight %s was dequantized from %s to %s and the delta folded in.", self.cls_name,
                    self.weight.shape, self.weight.quantization_info()["quant_type"], self.param_init_type)
        weight = Parameter(Tensor(weight, self.param_init_type), name="weight")
        bias = Parameter(Tensor(bias, self.param_init_type), name="bias") if self.has_bias else None
        return weight, bias

    def to_plain_dense(self):
        """This cell merged, as a Dense layer that holds the very same ``weight``/``bias`` Parameters.

        That is an ``nn.Dense`` when the cell computes in its parameters' dtype, as ``nn.Dense`` does; otherwise a
        :class:`DenseCore`, which computes in ``compute_dtype`` and returns the input's dtype, as this cell did.
        On a quantized base the weight is dequantized to ``param_init_type`` with the delta folded in (in float32),
        into new Parameters of the same names, and the log says so; the cell itself stays as it was.
        """
        if self.weight_quantized:
            weight, bias = self._dequantized_merge()
        else:
            if not self.merged:
                self.merge()
            weight, bias = self.weight, self.bias
        if self.compute_dtype == self.param_init_type:
            dense = nn.Dense(self.in_channels, self.out_channels, weight_init="zeros", bias_init="zeros",
                             has_bias=self.has_bias, activation=self.activation, dtype=self.param_init_type)
        else:
            dense = DenseCore(self.in_channels, self.out_channels, weight_init="zeros", has_bias=self.has_bias,
                              activation=self.activation, param_init_type=self.param_init_type,
                              compute_dtype=self.compute_dtype)
        # Reusing the Parameter objects keeps their values, names and any sharing without a copy.
        dense.weight = weight
        if self.has_bias:
            dense.bias = bias
        return dense


def merged_cells(network):
    """Paths of the cells of ``network`` whose delta is folded into their weights."""
    return [path for path, cell in network.cells_and_names() if isinstance(cell, MergeableDense) and cell.merged]
