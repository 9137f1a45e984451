"""Fine-tuning the Llama of examples/llm with every method (examples/llm/finetune.py, methods.py, training.py,
data.py), on a tiny random model: no GGUF file is read.

Each method applies, trains a few GRAPH-mode steps with ``Model.train`` (the loss falls, frozen weights stay
bit-identical), and its delta saves and reloads into a fresh model with identical logits. The review data masks the
prompt and the padding from the loss, checked against a direct computation.
"""
import doctest

import numpy as np
import pytest
import mindspore as ms

import llm.data
import llm.summarize as summarize
from llm.data import IGNORE_INDEX, MINILM_HELD_OUT, encode_examples, review_split, token_log_likelihoods
from llm.finetune import DEFAULT_LRS, parse_args
from llm.generate import continue_without_cache, generate
from llm.methods import METHODS, apply_method
from llm.model import LlamaConfig, LlamaForCausalLM
from llm.training import CausalLMWithLoss, logits_of, train
from mindpet import load_delta, load_delta_checkpoint, save_delta

TINY = dict(vocab_size=48, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
            max_position=32)
BATCH, LENGTH, STEPS = 4, 12, 8
# A learning rate per method that moves the tiny model within STEPS steps.
TINY_LRS = {"full": 1e-2, "lora": 1e-1, "qlora": 1e-1, "ia3": 1e-1, "prompt_tuning": 1e-1, "ptuning": 3e-2,
            "prefix": 3e-2, "ptuning2": 1e-1}
# The tiny model's widths (32, 48) are multiples of this NF4 block.
TINY_OPTIONS = dict(lora_rank=4, lora_alpha=8, quant_block_size=16, num_virtual_tokens=3, encoder_hidden_size=16,
                    prefix_length=2, prompt_tuning_init="TEXT", prompt_tuning_init_token_ids=[5, 6, 7])


def _tiny_base(weights=None):
    """A tiny Llama, with `weights` (name to array) when given."""
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    if weights is not None:
        for name, param in model.parameters_and_names():
            param.set_data(ms.Tensor(weights[name]))
    return model


@pytest.fixture(scope="module")
def base_weights():
    """Random weights of a larger scale than the model's initializer (0.02), whose tiny logits would leave the
    delta methods little gradient to learn from in a few steps; the RMSNorm weights stay ones."""
    rng = np.random.default_rng(1)
    return {name: param.asnumpy() if "layernorm" in name or name == "model.norm.weight"
            else rng.normal(0.0, 0.3, param.shape).astype(np.float32)
            for name, param in _tiny_base().parameters_and_names()}


def _tiny_examples(rows):
    """Review-shaped examples of the tiny vocabulary: a two-token prompt per label, and an answer of 3 to 8 tokens
    that runs through a fixed sequence of that label, so there is something to learn in a few steps."""
    lengths = np.random.default_rng(3).integers(3, 9, size=rows)
    reviews = [(" ".join(str(10 * (1 + row % 2) + step) for step in range(length)), row % 2)
               for row, length in enumerate(lengths)]
    prompts = {0: [1, 3], 1: [1, 4]}
    return encode_examples(reviews, prompts, lambda text: [int(word) for word in text.split()], end_ids=[2],
                           max_length=LENGTH, pad_id=0)


def test_encode_examples_masks_prompt_and_padding():
    prompts = {0: [1, 7, 8], 1: [1, 9]}
    examples = encode_examples([("a b", 1), ("c d e f g h", 0)], prompts,
                               lambda text: [20 + ord(c) - ord("a") for c in text.split()], end_ids=[2],
                               max_length=8, pad_id=0)
    # Row 0: prompt 1 9, answer 20 21 2, then padding; row 1: prompt 1 7 8, the answer cut before its end token 2.
    assert examples.input_ids.tolist() == [[1, 9, 20, 21, 0, 0, 0, 0], [1, 7, 8, 22, 23, 24, 25, 26]]
    assert examples.labels.tolist() == [[IGNORE_INDEX, 20, 21, 2] + [IGNORE_INDEX] * 4,
                                        [IGNORE_INDEX, IGNORE_INDEX, 22, 23, 24, 25, 26, 27]]
    assert examples.target_count == 9
    with pytest.raises(ValueError, match="max_length.*longest prompt \\(3 tokens\\).*3"):
        encode_examples([("a", 0)], prompts, lambda text: [20], end_ids=[2], max_length=3, pad_id=0)


def test_loss_counts_answer_tokens_only(base_weights, graph_mode):
    """The training loss equals the mean cross entropy over the answer tokens, computed directly from the logits
    at the positions each answer occupies (from the prompt and answer lengths, not from the labels)."""
    prompts = {0: [1, 3, 5], 1: [1, 4]}
    answers = [([11, 12, 13, 14], 1), ([15, 16], 0), ([17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27], 1), ([30], 0)]
    examples = encode_examples([(" ".join(map(str, ids)), label) for ids, label in answers], prompts,
                               lambda text: [int(word) for word in text.split()], end_ids=[2], max_length=LENGTH,
                               pad_id=0)
    model = _tiny_base(base_weights)
    logits = logits_of(model, examples.input_ids).astype(np.float64)
    losses = []
    for row, (answer, label) in enumerate(answers):
        tokens = (prompts[label] + answer + [2])[:LENGTH + 1]
        for position in range(len(prompts[label]) - 1, len(tokens) - 1):
            row_logits = logits[row, position]
            log_normalizer = np.log(np.sum(np.exp(row_logits - row_logits.max()))) + row_logits.max()
            losses.append(log_normalizer - row_logits[tokens[position + 1]])
    loss = CausalLMWithLoss(model)(ms.Tensor(examples.input_ids), ms.Tensor(examples.labels)).asnumpy()
    assert len(losses) == examples.target_count
    np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(-token_log_likelihoods(logits, examples.labels), losses, rtol=1e-6)


def test_review_split_stays_inside_the_minilm_split():
    reviews = llm.data.read_reviews()
    train_reviews, held_out = review_split(200, 50, reviews)
    minilm_train, minilm_held_out = llm.data.split_reviews(reviews, 200, MINILM_HELD_OUT)
    assert held_out == minilm_held_out[:50] and train_reviews == minilm_train
    assert not {text for text, _ in train_reviews} & {text for text, _ in minilm_held_out}
    with pytest.raises(ValueError, match="num_eval.*1000.*1001"):
        review_split(10, MINILM_HELD_OUT + 1, reviews)


def test_options_parse():
    args = parse_args([])
    assert (args.method, args.batch_size, args.max_length, args.eval_batch_size) == ("lora", 4, 80, 4)
    assert args.lr == DEFAULT_LRS["lora"]
    args = parse_args(["--method", "prefix", "--lr", "0.5", "--steps", "3", "--prefix-length", "4"])
    assert (args.method, args.lr, args.steps, args.prefix_length) == ("prefix", 0.5, 3, 4)
    assert set(DEFAULT_LRS) == set(METHODS)
    with pytest.raises(SystemExit):
        parse_args(["--method", "bitfit"])
    with pytest.raises(ValueError, match="'method' must be one of"):
        apply_method(_tiny_base(), "bitfit")


def _build(method, weights):
    model = _tiny_base(weights)
    return model, apply_method(model, method, **TINY_OPTIONS)


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_saves_and_reloads(method, base_weights, tmp_path, graph_mode):
    model, trainable = _build(method, base_weights)
    assert trainable
    frozen = {name: param.asnumpy().copy() for name, param in model.parameters_and_names()
              if not param.requires_grad}
    assert (method == "full") == (not frozen)
    examples = _tiny_examples(BATCH * STEPS)
    probe = examples.select(slice(0, BATCH))
    loss_before = -np.mean(token_log_likelihoods(logits_of(model, probe.input_ids), probe.labels))
    checkpoint, _ = train(model, examples, TINY_LRS[method], STEPS, BATCH, seed=0, output_dir=str(tmp_path / "ckpt"),
                          prefix=method)
    trained_logits = logits_of(model, probe.input_ids)
    assert -np.mean(token_log_likelihoods(trained_logits, probe.labels)) < 0.9 * loss_before
    for name, param in model.parameters_and_names():
        if name in frozen:
            np.testing.assert_array_equal(param.asnumpy(), frozen[name], err_msg=name)
    saved = checkpoint if method == "full" else save_delta(model, str(tmp_path / "adapter"))
    fresh, _ = _build(method, base_weights)
    if method == "full":
        load_delta_checkpoint(fresh, saved)
    else:
        load_delta(fresh, saved)
    np.testing.assert_array_equal(logits_of(fresh, probe.input_ids), trained_logits)


def test_batched_continuations_match_cached_generation(base_weights):
    """The batched uncached greedy answers (through one evaluation-shaped graph) equal llm.generate's, one prompt at
    a time with the KV cache."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        model = _tiny_base(base_weights)
        prompts = [[1, 4, 9], [1, 3, 5, 7, 11]]
        stop = {47, 30}
        continuations = continue_without_cache(model, prompts, max_new_tokens=5, length=10, batch_size=3, stop=stop)
        for prompt, continuation in zip(prompts, continuations):
            assert continuation == generate(model, prompt, max_new_tokens=5, stop=stop)
        with pytest.raises(ValueError, match="'length' >= 10"):
            continue_without_cache(model, prompts, max_new_tokens=5, length=9, batch_size=3, stop=stop)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


@pytest.mark.parametrize("module", [llm.data])
def test_module_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0



def _run_record(method, loss_after):
    return {"method": method, "lr": 1e-3, "trainable_params": 10, "trainable_percent": 0.5, "loss_before": 4.0,
            "loss_after": loss_after, "perplexity_before": float(np.exp(4.0)),
            "perplexity_after": float(np.exp(loss_after)), "step_median_seconds": 1.5, "first_step_seconds": 40.0,
            "peak_rss_mb": 8192.0, "delta_bytes": 2e6, "run_minutes": 5.0, "steps": 60, "batch_size": 4,
            "max_length": 80, "eval_answer_tokens": 100, "num_eval": 8, "reload_max_abs_logit_diff": 0.0,
            "generations_before": {"Write a positive movie review.": "It was | fine."},
            "generations_after": {"Write a positive movie review.": "Great\nfun."}}


def test_summary_shows_each_methods_last_run_in_order(tmp_path):
    text = summarize.summary([_run_record("ia3", 3.5), _run_record("lora", 3.9), _run_record("ia3", 3.0)])
    rows = [line for line in text.splitlines() if line.startswith("| lora") or line.startswith("| ia3")]
    assert rows[0].startswith("| lora |") and "4.000 → 3.900" in rows[0]
    assert rows[1].startswith("| ia3 |") and "4.000 → 3.000" in rows[1] and "| 8.0 | 2 |" in rows[1]
    assert '"It was \\| fine." | "Great fun."' in text
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{summarize.START_MARKER}\nold\n{summarize.END_MARKER}\nend\n", encoding="utf-8")
    summarize.write_into(str(page), text)
    assert page.read_text(encoding="utf-8") == f"intro\n{summarize.START_MARKER}\n{text}\n{summarize.END_MARKER}\nend\n"
    page.write_text("no markers", encoding="utf-8")
    with pytest.raises(ValueError, match="must hold the lines"):
        summarize.write_into(str(page), text)
