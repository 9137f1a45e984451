"""What a delta checkpoint file can be: its formats, its encryption modes and the counters stored beside it."""
import os

from mindpet.utils.validation import argument_error

CHECKPOINT_FORMATS = ("ckpt", "safetensors")
# The modes MindSpore encrypts and decrypts .ckpt files with.
ENCRYPTION_MODES = ("AES-GCM", "AES-CBC", "SM4-CBC")
# The counters CheckpointConfig(append_info=['epoch_num', 'step_num']) stores beside the parameters.
TRAINING_COUNTER_KEYS = ("epoch_num", "step_num")


def checkpoint_format(path, arg_name, owner):
    """The format of the checkpoint at ``path``, from its extension.

    Args:
        path (str): A checkpoint path.
        arg_name (str): The argument that carried `path`, for the error message.
        owner (str): The public function or class named in the error message.

    Returns:
        str, ``'ckpt'`` or ``'safetensors'``.

    Raises:
        ValueError: If the extension is neither ``.ckpt`` nor ``.safetensors``.
    """
    extension = os.path.splitext(path)[1].lstrip(".")
    if extension not in CHECKPOINT_FORMATS:
        raise argument_error(ValueError, owner, arg_name,
                             f"a path ending in one of {tuple('.' + fmt for fmt in CHECKPOINT_FORMATS)}", path)
    return extension


def check_encryption_mode(mode, arg_name, owner):
    """Return ``mode`` if it is one of ``ENCRYPTION_MODES``: TypeError for a non-str, ValueError for another str."""
    if not isinstance(mode, str):
        raise argument_error(TypeError, owner, arg_name, f"one of {ENCRYPTION_MODES}", mode)
    if mode not in ENCRYPTION_MODES:
        raise argument_error(ValueError, owner, arg_name, f"one of {ENCRYPTION_MODES}", mode)
    return mode
