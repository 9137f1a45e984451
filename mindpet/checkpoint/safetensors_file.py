"""Reading and writing safetensors files with NumPy alone, header metadata included.

The format (https://huggingface.co/docs/safetensors) is an 8-byte little-endian header length, a JSON header that maps
each tensor name to its dtype, shape and byte range (plus an optional ``__metadata__`` map of str to str), then the
raw little-endian bytes. mindpet writes it itself so that the metadata it needs (versions, the base fingerprint) goes
into the header, and so that no package beyond NumPy is needed. ``BF16``, which NumPy lacks, is read as float32 and
written from float32 with round-to-nearest-even.
"""
import json
import os

import numpy as np

METADATA_KEY = "__metadata__"
_HEADER_LENGTH_BYTES = 8
# Headers larger than this are refused before being read: a corrupt length must not allocate gigabytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_CODES = {np.dtype(value): key for key, value in _DTYPES.items()}
BFLOAT16 = "BF16"


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file; the message names the file and what is wrong."""


def _fail(path, problem):
    return SafetensorsError(f"'{path}' is not a valid safetensors file: {problem}.")


def read_header(path):
    """The JSON header of the safetensors file at ``path`` and the offset where its data starts.

    Raises:
        SafetensorsError: the file is shorter than its header says, or the header is not a JSON object.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        length = int.from_bytes(file.read(_HEADER_LENGTH_BYTES), "little")
        if size < _HEADER_LENGTH_BYTES or length > min(size - _HEADER_LENGTH_BYTES, MAX_HEADER_BYTES):
            raise _fail(path, f"its header length field ({length}) does not fit the file size ({size} bytes)")
        try:
            header = json.loads(file.read(length))
        except ValueError as err:
            raise _fail(path, f"its header is not JSON ({err.__class__.__name__})") from err
    if not isinstance(header, dict):
        raise _fail(path, "its header is not a JSON object")
    return header, _HEADER_LENGTH_BYTES + length


def _bfloat16_to_float32(raw):
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _float32_to_bfloat16(values):
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    # Round to nearest, ties to even, on the 16 bits that are dropped.
    rounded = bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))
    return (rounded >> 16).astype(np.uint16)


def read_safetensors(path):
    """The tensors and the metadata of a safetensors file.

    Args:
        path (str): the file.

    Returns:
        tuple(dict[str, numpy.ndarray], dict[str, str]): the tensors in file order (``BF16`` ones as float32) and
        the ``__metadata__`` map (empty when absent).

    Raises:
        SafetensorsError: the header is malformed, a dtype is unknown, or a byte range does not fit its shape or the
            file (a truncated file).
    """
    header, data_start = read_header(path)
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict):
        raise _fail(path, "its __metadata__ is not a JSON object")
    data_size = os.path.getsize(path) - data_start
    tensors = {}
    with open(path, "rb") as file:
        for name, entry in header.items():
            try:
                code, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            except (KeyError, TypeError, ValueError) as err:
                raise _fail(path, f"the entry of {name!r} lacks dtype, shape or data_offsets") from err
            dtype = np.dtype(np.uint16) if code == BFLOAT16 else np.dtype(_DTYPES.get(code, np.void))
            if dtype == np.dtype(np.void):
                raise _fail(path, f"the tensor {name!r} has the unsupported dtype {str(code)[:20]!r}")
            count = int(np.prod(shape, dtype=np.int64))
            if not 0 <= begin <= end <= data_size or end - begin != count * dtype.itemsize:
                raise _fail(path, f"the bytes of {name!r} ({begin}..{end}) do not hold shape {shape} of {code} "
                                  f"within the {data_size} data bytes (a truncated file?)")
            file.seek(data_start + begin)
            values = np.frombuffer(file.read(end - begin), dtype=dtype.newbyteorder("<")).reshape(shape)
            tensors[name] = _bfloat16_to_float32(values) if code == BFLOAT16 else values.astype(dtype)
    return tensors, {str(key): str(value) for key, value in metadata.items()}


def write_safetensors(path, tensors, metadata=None, bfloat16_names=()):
    """Write ``tensors`` to ``path`` as a safetensors file (not atomically: write into a staging folder).

    Args:
        path (str): the destination.
        tensors (dict[str, numpy.ndarray]): name to array, written in this order.
        metadata (dict[str, str], optional): the header's ``__metadata__``.
        bfloat16_names (Iterable[str]): tensors (float32 arrays) to store as ``BF16``.

    Raises:
        TypeError: an array's dtype has no safetensors code, or a metadata key or value is not a str.
    """
    bfloat16_names = set(bfloat16_names)
    header, chunks, offset = {}, [], 0
    for name, values in tensors.items():
        if name in bfloat16_names:
            raw, code = _float32_to_bfloat16(values), BFLOAT16
        else:
            raw = np.ascontiguousarray(values)
            code = _CODES.get(raw.dtype)
            if code is None:
                raise TypeError(f"For 'write_safetensors', the tensor {name!r} has dtype {raw.dtype}, which "
                                f"safetensors cannot store here; expected one of {sorted(_DTYPES)}.")
        data = raw.astype(raw.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(raw.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        if not all(isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()):
            raise TypeError("For 'write_safetensors', the argument 'metadata' must map str to str.")
        header = {METADATA_KEY: dict(metadata), **header}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # The data must start 8-byte aligned; the header is padded with spaces, as the reference writer does.
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as file:
        file.write(len(encoded).to_bytes(_HEADER_LENGTH_BYTES, "little"))
        file.write(encoded)
        for data in chunks:
            file.write(data)
