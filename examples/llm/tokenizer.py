"""The GPT-2 style byte-level BPE tokenizer of a GGUF file, built with the ``tokenizers`` package, and ChatML.

A GGUF file of a ``gpt2`` tokenizer holds the vocabulary (``tokenizer.ggml.tokens``, byte-level strings such as
``Ġthe``), the merges (``tokenizer.ggml.merges``, ``"Ġ t"``), the token types (3 = control, e.g. ``<|im_start|>``)
and the name of the pre-tokenizer (``tokenizer.ggml.pre``). SmolLM2's is ``smollm``, which llama.cpp splits with two
regular expressions in turn: ``\\p{N}`` (every digit alone), then GPT-2's
``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)``. Here that is
``Digits(individual_digits=True)`` followed by ``ByteLevel(add_prefix_space=False)``, whose built-in regex is the same
GPT-2 expression. Control tokens are special: they are matched whole in the text and skipped when decoding with
``skip_special_tokens``.

The chat template of SmolLM2-Instruct is ChatML; :meth:`ChatTokenizer.apply_chat_template` renders it as the GGUF's
Jinja template does, with its default system message when the conversation does not begin with one::

    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    What is the capital of France?<|im_end|>
    <|im_start|>assistant
"""
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

# The pre-tokenizers implemented, by the name llama.cpp writes into tokenizer.ggml.pre.
SUPPORTED_PRE_TOKENIZERS = ("smollm",)
CONTROL_TOKEN_TYPE = 3
DEFAULT_SYSTEM_MESSAGE = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def build_bpe(tokens, merges, special_tokens):
    """A ``tokenizers.Tokenizer``: byte-level BPE over `tokens` (id = index) and `merges`, smollm pre-tokenizer.

    Args:
        tokens (list[str]): the vocabulary in byte-level spelling.
        merges (list[str]): the merges, ``"left right"``, highest priority first.
        special_tokens (list[str]): tokens matched whole in the text and never split.
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    merge_pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    tokenizer = Tokenizer(models.BPE(vocab, merge_pairs, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(special_tokens)
    return tokenizer


class ChatTokenizer:
    """Encode and decode text, and render ChatML conversations, for a GGUF model's vocabulary.

    Args:
        tokenizer (tokenizers.Tokenizer): the BPE (see :func:`build_bpe`).
        bos_token_id (int): the beginning-of-sequence id from the file (SmolLM2: 1, ``<|im_start|>``).
        eos_token_id (int): the end-of-sequence id (SmolLM2: 2, ``<|im_end|>``).
        pad_token_id (int): the padding id (SmolLM2: 2).

    Examples:
        >>> from llm.tokenizer import ChatTokenizer, build_bpe
        >>> bpe = build_bpe(["<|im_end|>", "h", "i", "hi", "Ġ", "Ġhi"], ["h i", "Ġ hi"], ["<|im_end|>"])
        >>> tokenizer = ChatTokenizer(bpe, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        >>> tokenizer.encode("hi hi<|im_end|>")
        [3, 5, 0]
        >>> tokenizer.decode([3, 5, 0])
        'hi hi'
    """

    def __init__(self, tokenizer, bos_token_id, eos_token_id, pad_token_id):
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id

    @classmethod
    def from_gguf(cls, reader):
        """The tokenizer stored in an open ``gguf.GGUFReader``.

        Raises:
            ValueError: If the file's tokenizer is not ``gpt2`` BPE with a supported pre-tokenizer, or lacks its
                vocabulary or merges.
        """
        fields = reader.fields

        def value(key, default=None):
            return fields[key].contents() if key in fields else default

        model_type, pre = value("tokenizer.ggml.model"), value("tokenizer.ggml.pre")
        if model_type != "gpt2" or pre not in SUPPORTED_PRE_TOKENIZERS:
            raise ValueError(f"For 'ChatTokenizer.from_gguf', the tokenizer must be 'gpt2' BPE with pre-tokenizer "
                             f"one of {SUPPORTED_PRE_TOKENIZERS}, but the file has model {model_type!r} and pre "
                             f"{pre!r}.")
        tokens, merges = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.merges")
        if not tokens or not merges:
            raise ValueError("For 'ChatTokenizer.from_gguf', the file lacks tokenizer.ggml.tokens or "
                             "tokenizer.ggml.merges.")
        token_types = value("tokenizer.ggml.token_type", [])
        special = [token for token, kind in zip(tokens, token_types) if kind == CONTROL_TOKEN_TYPE]
        eos_token_id = int(value("tokenizer.ggml.eos_token_id"))
        return cls(build_bpe(tokens, merges, special), bos_token_id=int(value("tokenizer.ggml.bos_token_id")),
                   eos_token_id=eos_token_id,
                   pad_token_id=int(value("tokenizer.ggml.padding_token_id", eos_token_id)))

    @property
    def vocab_size(self):
        return self.tokenizer.get_vocab_size()

    def token_to_id(self, token):
        """The id of `token` (e.g. ``"<|im_end|>"``), or ``None`` when the vocabulary lacks it."""
        return self.tokenizer.token_to_id(token)

    def encode(self, text):
        """The token ids of `text` (no token added; control tokens written in the text are recognised)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens=True):
        """The text of `ids`; control tokens are dropped unless `skip_special_tokens` is ``False``."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @staticmethod
    def apply_chat_template(messages, add_generation_prompt=True):
        """Render a conversation in ChatML, as SmolLM2-Instruct's template does.

        Args:
            messages (list[dict]): ``{"role": "system" | "user" | "assistant", "content": str}`` in order. Without
                a leading system message the model's default one is inserted.
            add_generation_prompt (bool): end with ``<|im_start|>assistant\\n`` for the model to answer. Default:
                ``True``.

        Raises:
            ValueError: If `messages` is empty or a message lacks a string role or content.
        """
        if not messages:
            raise ValueError("For 'ChatTokenizer.apply_chat_template', the argument 'messages' must not be empty.")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                    or not isinstance(message.get("content"), str):
                raise ValueError("For 'ChatTokenizer.apply_chat_template', every message must be a dict with "
                                 "string 'role' and 'content'.")
        parts = []
        if messages[0]["role"] != "system":
            parts.append(f"{IM_START}system\n{DEFAULT_SYSTEM_MESSAGE}{IM_END}\n")
        parts.extend(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n" for message in messages)
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts)

    def chat_ids(self, prompt):
        """The token ids of a one-question conversation, ready for the model to answer."""
        return self.encode(self.apply_chat_template([{"role": "user", "content": prompt}]))
