"""Building Parameters from the init specs MindSpore cells accept."""
import numbers

import numpy as np
from mindspore import Parameter, Tensor
from mindspore import dtype as mstype
from mindspore.common.initializer import Initializer, initializer

from mindpet.utils.validation import argument_error, check_finite_number


def make_parameter(init, shape, dtype, name, arg_name, owner, requires_grad=True):
    """Create a Parameter named ``name`` of ``shape`` and ``dtype`` from ``init``.

    Args:
        init (Union[Tensor, str, Initializer, numbers.Number]): a Tensor of exactly ``shape``, an initializer
            name such as ``'normal'`` or ``'zeros'``, an Initializer instance, or a constant.
        shape (tuple[int]): the parameter's shape.
        dtype (mindspore.dtype): the parameter's dtype; a Tensor init is cast to it.
        name (str): the Parameter name, equal to the attribute it is stored in.
        arg_name (str): the user-facing argument that carried ``init``, for error messages.
        owner (str): the cell class name, for error messages.
        requires_grad (bool): whether the parameter is trainable.

    Raises:
        TypeError: ``init`` is of another type.
        ValueError: a Tensor of another shape, a Tensor or number that is NaN or infinite (it would make every
            output NaN), or an unknown initializer name.
    """
    shape = tuple(shape)
    if isinstance(init, Tensor):
        if tuple(init.shape) != shape:
            raise argument_error(ValueError, owner, arg_name, f"a Tensor of shape {shape}",
                                 f"Tensor of shape {tuple(init.shape)}")
        non_finite = int(np.size(init) - np.count_nonzero(np.isfinite(init.astype(mstype.float32).asnumpy())))
        if non_finite:
            raise argument_error(ValueError, owner, arg_name, "a Tensor of finite values",
                                 f"Tensor with {non_finite} NaN or infinite values")
        data = init.astype(dtype)
    elif isinstance(init, (str, Initializer)) or (isinstance(init, numbers.Number) and not isinstance(init, bool)):
        if isinstance(init, numbers.Real):
            check_finite_number(init, arg_name, owner)
        try:
            data = initializer(init, shape, dtype)
        except ValueError as err:
            raise argument_error(ValueError, owner, arg_name, "an initializer name known to "
                                 "mindspore.common.initializer", init) from err
    else:
        raise argument_error(TypeError, owner, arg_name, "a Tensor, str, Initializer or number", init)
    return Parameter(data, name=name, requires_grad=requires_grad)
