"""Delta checkpoint size against its payload (trainable parameters x bytes per element) and the full checkpoint."""
import os
import tempfile

import mindspore as ms

from mindpet.checkpoint import trained_parameters
from mindpet.checkpoint.formats import CHECKPOINT_FORMATS


def _file_size(save_obj, directory, name, file_format):
    path = os.path.join(directory, f"{name}.{file_format}")
    ms.save_checkpoint(save_obj, path, format=file_format)
    return os.path.getsize(path)


def checkpoint_sizes(net):
    """Save the trained parameters of ``net`` (as TrainableParamsCheckPoint selects them) and the whole ``net``.

    Args:
        net (mindspore.nn.Cell): a network already frozen for its method.

    Returns:
        dict: per format (``ckpt``, ``safetensors``), the delta file's ``delta_bytes``, its ``payload_bytes``
        (the sum of the tensors' ``nbytes``), ``overhead_bytes`` (the difference: names, shapes, dtypes and
        framing), ``name_bytes`` (the parameter names alone), ``overhead_per_tensor``, ``size_ratio`` (file over
        payload), ``full_bytes`` (the whole network's checkpoint) and ``share_of_full`` (delta over full file).
    """
    trained = trained_parameters(net)
    payload = sum(param.nbytes for param in trained)
    name_bytes = sum(len(param.name.encode()) for param in trained)
    entries = [{"name": param.name, "data": param} for param in trained]
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="mindpet_bench_") as directory:
        for file_format in CHECKPOINT_FORMATS:
            delta = _file_size(entries, directory, "delta", file_format)
            full = _file_size(net, directory, "full", file_format)
            sizes[file_format] = {"tensors": len(trained), "delta_bytes": delta, "payload_bytes": payload,
                                  "overhead_bytes": delta - payload, "name_bytes": name_bytes,
                                  "overhead_per_tensor": (delta - payload) / len(trained),
                                  "size_ratio": delta / payload, "full_bytes": full, "share_of_full": delta / full}
    return sizes
