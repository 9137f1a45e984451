"""The base of the configs of the methods that prepend virtual tokens: prompt tuning and P-tuning v1."""
import dataclasses

from mindpet.delta.base.config import DeltaConfig
from mindpet.injection.targeting import check_name_list
from mindpet.utils.validation import argument_error, check_positive_int

# The Args every virtual-token config shares (``{virtual_token_arguments}`` in its docstring).
_VIRTUAL_TOKEN_ARGUMENTS = """\
        num_virtual_tokens (int): virtual tokens prepended to every input. Default: ``20``.
        token_dim (int): their width, the model's embedding width; required.
        modules_to_save (list[str], optional): cells (e.g. a classifier head) trained and saved beside the virtual
            tokens. Default: ``None``.
        target_modules, exclude_modules: must stay ``None``: the virtual tokens enter through the input
            embeddings, not through layers of the model."""


@dataclasses.dataclass
class VirtualTokenConfig(DeltaConfig):
    """Virtual tokens prepended to the input embeddings: no layer is targeted, so the targeting fields stay None.

    Each method's config builds its cell with ``make_cell``; the model prepends its output with
    :func:`~mindpet.delta.prepend_virtual_tokens`. :func:`mindpet.get_delta_model` refuses these configs, as there
    is no layer to inject into.

    Args:
{virtual_token_arguments}

    Raises:
        TypeError: `num_virtual_tokens` or `token_dim` is not an int; `modules_to_save` is not a list of str.
        ValueError: `num_virtual_tokens` or `token_dim` is <= 0; `target_modules` or `exclude_modules` is given.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__doc__:
            cls.__doc__ = cls.__doc__.replace("{virtual_token_arguments}", _VIRTUAL_TOKEN_ARGUMENTS)

    num_virtual_tokens: int = 20
    token_dim: int = None

    def validate(self):
        owner = type(self).__name__
        for arg_name in ("target_modules", "exclude_modules"):
            if getattr(self, arg_name) is not None:
                raise argument_error(ValueError, owner, arg_name, "None (virtual tokens enter through the input "
                                     "embeddings; no layer is targeted)", getattr(self, arg_name))
        self.modules_to_save = check_name_list(self.modules_to_save, "modules_to_save", owner)
        check_positive_int(self.num_virtual_tokens, "num_virtual_tokens", owner)
        check_positive_int(self.token_dim, "token_dim", owner)
        return self


VirtualTokenConfig.__doc__ = VirtualTokenConfig.__doc__.replace("{virtual_token_arguments}", _VIRTUAL_TOKEN_ARGUMENTS)
