"""Prompt tuning: PromptTuningEmbedding against NumPy, its TEXT init, prepend_virtual_tokens, the config, the naming
rule that keeps 'ptuning' and 'ptuning2' apart, steering a frozen model, and the example BERT's embeddings hook."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from bert.methods import apply_method
from bert.modeling import BertClassifier, BertConfig
from mindpet import PromptTuningConfig, PTuningConfig, config_from_dict, get_delta_model, plan_delta
from mindpet.delta import PrefixEncoder, PromptEncoder, PromptTuningEmbedding, prepend_virtual_tokens
from mindpet.graph import freeze_delta
from mindpet.registry import get_method
from mindpet.utils.naming import is_delta_param
from virtual_token_helpers import (BATCH, SEQ_LENGTH, VOCAB, WIDTH, SteeredModel, assert_gradients_reach_only,
                                   assert_steering_trained, steering_batches, train_steering)

TABLE = "mindpet_delta_prompt_tuning_embedding"
TOKENS = 5


def table_of(cell):
    return getattr(cell, TABLE).asnumpy().astype(np.float64)


@pytest.mark.parametrize("param_init_type, dtype", [(ms.float32, None), (ms.float32, ms.float16),
                                                    (ms.float16, ms.float32), (ms.float16, ms.float16)])
def test_output_is_the_table_for_every_sample(mode, param_init_type, dtype):
    cell = PromptTuningEmbedding(TOKENS, WIDTH, param_init_type=param_init_type)
    table = table_of(cell)
    assert np.abs(table).min() > 0 and getattr(cell, TABLE).dtype == param_init_type
    output = cell(3) if dtype is None else cell(3, dtype)
    assert output.shape == (3, TOKENS, WIDTH) and output.dtype == (dtype or ms.float32)
    tolerance = 1e-3 if ms.float16 in (param_init_type, dtype) else 0
    np.testing.assert_allclose(output.asnumpy(), np.broadcast_to(table, (3, TOKENS, WIDTH)), rtol=tolerance)
    np.testing.assert_array_equal(cell.virtual_token_embeddings().asnumpy(), table.astype(np.float32))


@pytest.mark.parametrize("token_ids, rows", [([7, 3], [7, 3, 7, 3, 7]), ([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5]),
                                             ((4, 0, 9, 9, 2), [4, 0, 9, 9, 2]), ([np.int64(8)], [8] * 5)])
def test_text_init_copies_the_embedding_rows_repeated_or_cut(token_ids, rows):
    embedding = nn.Embedding(VOCAB, WIDTH)
    table = embedding.embedding_table.asnumpy()
    for source in (embedding, embedding.embedding_table, Tensor(table)):
        cell = PromptTuningEmbedding(TOKENS, WIDTH, init_token_ids=token_ids, embedding=source)
        np.testing.assert_array_equal(getattr(cell, TABLE).asnumpy(), table[rows])
    # The prompt is a copy: training it leaves the model's embeddings alone.
    getattr(cell, TABLE).set_data(Tensor(np.zeros((TOKENS, WIDTH), np.float32)))
    np.testing.assert_array_equal(embedding.embedding_table.asnumpy(), table)


@pytest.mark.parametrize("mask_dtype", [ms.int32, ms.float32, ms.bool_])
def test_prepend_puts_the_virtual_tokens_first_and_widens_the_mask(mode, mask_dtype):
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((2, SEQ_LENGTH, WIDTH)).astype(np.float32)
    virtual = rng.standard_normal((2, TOKENS, WIDTH)).astype(np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0]])
    out_embeds, out_mask = prepend_virtual_tokens(Tensor(embeds), Tensor(mask, mask_dtype),
                                                  Tensor(virtual, ms.float16))
    assert out_embeds.shape == (2, TOKENS + SEQ_LENGTH, WIDTH) and out_embeds.dtype == ms.float32
    assert out_mask.shape == (2, TOKENS + SEQ_LENGTH) and out_mask.dtype == mask_dtype
    np.testing.assert_array_equal(out_embeds.asnumpy()[:, TOKENS:], embeds)
    np.testing.assert_allclose(out_embeds.asnumpy()[:, :TOKENS], virtual, rtol=1e-3)
    expected_mask = np.concatenate([np.ones((2, TOKENS)), mask], axis=1)
    np.testing.assert_array_equal(out_mask.asnumpy().astype(np.int64), expected_mask)


def test_prepend_inside_a_graph_and_the_gradients_reach_only_the_prompt(mode):
    model = SteeredModel(PromptTuningEmbedding(TOKENS, WIDTH))
    freeze_delta(model, "prompt_tuning")
    assert_gradients_reach_only(model, [f"virtual_tokens.{TABLE}"])


def test_prompt_tuning_steers_a_frozen_model(graph_mode):
    result = train_steering(PromptTuningEmbedding(TOKENS, WIDTH), "prompt_tuning")
    assert_steering_trained(result, [f"virtual_tokens.{TABLE}"])


@pytest.mark.parametrize("args, kwargs, error, arg_name", [
    ((0, WIDTH), {}, ValueError, "num_virtual_tokens"),
    ((2.0, WIDTH), {}, TypeError, "num_virtual_tokens"),
    ((TOKENS, True), {}, TypeError, "token_dim"),
    ((TOKENS, WIDTH), {"init_token_ids": [1]}, ValueError, "embedding"),
    ((TOKENS, WIDTH), {"embedding": nn.Embedding(VOCAB, WIDTH)}, ValueError, "init_token_ids"),
    ((TOKENS, WIDTH), {"init_token_ids": [1, VOCAB], "embedding": nn.Embedding(VOCAB, WIDTH)}, ValueError,
     "init_token_ids"),
    ((TOKENS, WIDTH), {"init_token_ids": [-1], "embedding": nn.Embedding(VOCAB, WIDTH)}, ValueError,
     "init_token_ids"),
    ((TOKENS, WIDTH), {"init_token_ids": [], "embedding": nn.Embedding(VOCAB, WIDTH)}, ValueError,
     "init_token_ids"),
    ((TOKENS, WIDTH), {"init_token_ids": [1.0], "embedding": nn.Embedding(VOCAB, WIDTH)}, TypeError,
     "init_token_ids"),
    ((TOKENS, WIDTH), {"init_token_ids": 3, "embedding": nn.Embedding(VOCAB, WIDTH)}, TypeError, "init_token_ids"),
    ((TOKENS, WIDTH), {"init_token_ids": [1], "embedding": nn.Embedding(VOCAB, WIDTH + 1)}, ValueError,
     "embedding"),
    ((TOKENS, WIDTH), {"init_token_ids": [1], "embedding": np.zeros((VOCAB, WIDTH))}, TypeError, "embedding"),
    ((TOKENS, WIDTH), {"param_init_type": ms.int32}, TypeError, "param_init_type"),
])
def test_constructor_errors_name_the_argument(args, kwargs, error, arg_name):
    with pytest.raises(error, match=f"'PromptTuningEmbedding'.*'{arg_name}'"):
        PromptTuningEmbedding(*args, **kwargs)


@pytest.mark.parametrize("batch_size, dtype, error, arg_name", [(0, None, ValueError, "batch_size"),
                                                               (2.5, None, TypeError, "batch_size"),
                                                               (2, ms.int32, TypeError, "dtype")])
def test_call_arguments_are_checked(mode, batch_size, dtype, error, arg_name):
    cell = PromptTuningEmbedding(TOKENS, WIDTH)
    with pytest.raises(error, match=f"'PromptTuningEmbedding'.*'{arg_name}'"):
        cell(batch_size, dtype)


@pytest.mark.parametrize("arguments, error, arg_name", [
    (("embeds", "mask", "virtual"), TypeError, "inputs_embeds"),
    ((np.zeros((2, 3, 4), np.float32), None, None), TypeError, "inputs_embeds"),
    ((Tensor(np.zeros((2, 3, 4), np.int32)), None, None), TypeError, "inputs_embeds"),
    ((None, Tensor(np.zeros((2, 3), np.int8)), None), TypeError, "attention_mask"),
    ((Tensor(np.zeros((2, 3), np.float32)), None, None), ValueError, "inputs_embeds"),
    ((None, Tensor(np.ones((2, 4), np.int32)), None), ValueError, "attention_mask"),
    ((None, None, Tensor(np.zeros((3, 2, 4), np.float32))), ValueError, "virtual_embeds"),
    ((None, None, Tensor(np.zeros((2, 2, 5), np.float32))), ValueError, "virtual_embeds"),
    ((None, None, Tensor(np.zeros((2, 4), np.float32))), ValueError, "virtual_embeds"),
])
def test_prepend_errors_name_the_argument(arguments, error, arg_name):
    defaults = (Tensor(np.zeros((2, 3, 4), np.float32)), Tensor(np.ones((2, 3), np.int32)),
                Tensor(np.zeros((2, 2, 4), np.float32)))
    given = [default if value is None else value for value, default in zip(arguments, defaults)]
    with pytest.raises(error, match=f"'prepend_virtual_tokens'.*'{arg_name}'"):
        prepend_virtual_tokens(*given)


def test_shard_splits_only_the_batch():
    cell = PromptTuningEmbedding(TOKENS, WIDTH)
    assert cell.shard(data_parallel=4) is cell
    assert cell.tile.in_strategy == ((4, 1, 1),)
    with pytest.raises(ValueError, match="'PromptTuningEmbedding'.*'model_parallel'.*none"):
        cell.shard(model_parallel=2)
    with pytest.raises(TypeError, match="'data_parallel'"):
        cell.shard(data_parallel=1.0)


def test_config_round_trips_and_builds_the_cell():
    embedding = nn.Embedding(VOCAB, WIDTH)
    config = PromptTuningConfig(num_virtual_tokens=TOKENS, token_dim=WIDTH, prompt_tuning_init="text",
                                prompt_tuning_init_token_ids=[2, 9], prompt_tuning_init_text="a review",
                                modules_to_save=["head"])
    assert config.prompt_tuning_init == "TEXT"
    assert config_from_dict(config.to_dict()) == config
    cell = config.make_cell(embedding=embedding)
    assert isinstance(cell, PromptTuningEmbedding)
    np.testing.assert_array_equal(getattr(cell, TABLE).asnumpy(), embedding.embedding_table.asnumpy()[[2, 9] * 2 + [2]])
    random_cell = PromptTuningConfig(num_virtual_tokens=3, token_dim=WIDTH).make_cell()
    assert getattr(random_cell, TABLE).shape == (3, WIDTH)


@pytest.mark.parametrize("kwargs, error, arg_name", [
    ({}, TypeError, "token_dim"),
    ({"token_dim": WIDTH, "num_virtual_tokens": 0}, ValueError, "num_virtual_tokens"),
    ({"token_dim": WIDTH, "target_modules": ["query"]}, ValueError, "target_modules"),
    ({"token_dim": WIDTH, "exclude_modules": "x"}, ValueError, "exclude_modules"),
    ({"token_dim": WIDTH, "prompt_tuning_init": "VOCAB"}, ValueError, "prompt_tuning_init"),
    ({"token_dim": WIDTH, "prompt_tuning_init": 1}, TypeError, "prompt_tuning_init"),
    ({"token_dim": WIDTH, "prompt_tuning_init": "TEXT"}, ValueError, "prompt_tuning_init_token_ids"),
    ({"token_dim": WIDTH, "prompt_tuning_init_token_ids": [1]}, ValueError, "prompt_tuning_init_token_ids"),
    ({"token_dim": WIDTH, "prompt_tuning_init_text": "a"}, ValueError, "prompt_tuning_init_text"),
    ({"token_dim": WIDTH, "prompt_tuning_init": "TEXT", "prompt_tuning_init_token_ids": "1 2"}, TypeError,
     "prompt_tuning_init_token_ids"),
    ({"token_dim": WIDTH, "prompt_tuning_init": "TEXT", "prompt_tuning_init_token_ids": [-3]}, ValueError,
     "prompt_tuning_init_token_ids"),
    ({"token_dim": WIDTH, "prompt_tuning_init": "TEXT", "prompt_tuning_init_token_ids": [1],
      "prompt_tuning_init_text": b"a"}, TypeError, "prompt_tuning_init_text"),
])
def test_config_errors_name_the_field(kwargs, error, arg_name):
    with pytest.raises(error, match=f"'PromptTuningConfig'.*'{arg_name}'"):
        PromptTuningConfig(**kwargs)


def test_make_cell_checks_the_embedding_against_the_init():
    text = PromptTuningConfig(token_dim=WIDTH, prompt_tuning_init="TEXT", prompt_tuning_init_token_ids=[1])
    with pytest.raises(ValueError, match="'PromptTuningConfig.make_cell'.*'embedding'"):
        text.make_cell()
    with pytest.raises(ValueError, match="'PromptTuningConfig.make_cell'.*'embedding'"):
        PromptTuningConfig(token_dim=WIDTH).make_cell(embedding=nn.Embedding(VOCAB, WIDTH))


def test_the_methods_are_registered_and_not_injectable():
    for name, config in (("prompt_tuning", PromptTuningConfig(token_dim=WIDTH)),
                         ("ptuning", PTuningConfig(token_dim=WIDTH, encoder_hidden_size=4))):
        record = get_method(name)
        assert record.config_class is type(config) and not record.injectable and not record.mergeable
        for apply in (get_delta_model, plan_delta):
            with pytest.raises(ValueError, match=f"'{name}' cannot be injected"):
                apply(nn.Dense(2, 2), config)


def test_ptuning_and_ptuning2_markers_never_match_each_others_parameters():
    names = {"ptuning": ["encoder.mindpet_delta_ptuning_embedding", "x.mindpet_delta_ptuning_dense_in.weight",
                         "x.mindpet_delta_ptuning_lstm.weight_ih_l0"],
             "ptuning2": ["encoder.mindpet_delta_ptuning2_embedding.embedding_table",
                          "x.mindpet_delta_ptuning2_dense_in.weight"],
             "prompt_tuning": ["bert.embeddings.virtual_tokens.mindpet_delta_prompt_tuning_embedding"]}
    for method, own in names.items():
        record = get_method(method)
        for other, theirs in names.items():
            for name in theirs:
                assert is_delta_param(name, method) == (other == method), (method, name)
                assert record.owns_parameter(name) == (other == method), (method, name)


def test_freeze_delta_keeps_ptuning_and_ptuning2_apart():
    net = nn.CellList([PromptEncoder(2, 4, 3), PrefixEncoder(2, 1, 1, 2)])
    ptuning = freeze_delta(net, "ptuning")
    assert ptuning and all("mindpet_delta_ptuning_" in name for name in ptuning)
    assert freeze_delta(net, "ptuning2") == ["1.mindpet_delta_ptuning2_embedding.embedding_table"]


BERT_CONFIG = BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                         max_position_embeddings=32)


def test_bert_hook_computes_what_the_plain_model_computes_on_the_prompt_tokens_prepended(mode):
    """With a TEXT-initialised prompt as long as its ids, the hooked BERT is the plain BERT fed ``ids + input``:
    the virtual tokens are prepended to the word embeddings, before positions, as PEFT prepends them."""
    prompt_ids = [5, 17, 3]
    ids = np.array([[2, 7, 8, 9], [2, 11, 3, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int32)
    hooked = BertClassifier(BERT_CONFIG, 2)
    plain = BertClassifier(BERT_CONFIG, 2)
    ms.load_param_into_net(plain, {param.name: param for param in hooked.get_parameters()})
    hooked.set_virtual_tokens(PromptTuningEmbedding(len(prompt_ids), BERT_CONFIG.hidden_size,
                                                    init_token_ids=prompt_ids,
                                                    embedding=hooked.bert.embeddings.word_embeddings))
    assert f"bert.embeddings.virtual_tokens.{TABLE}" in {param.name for param in hooked.get_parameters()}
    hooked.set_train(False)
    plain.set_train(False)
    text_states = hooked.bert(Tensor(ids), Tensor(mask)).asnumpy()
    full_ids = np.concatenate([np.tile(prompt_ids, (2, 1)), ids], axis=1).astype(np.int32)
    full_mask = np.concatenate([np.ones((2, 3), np.int32), mask], axis=1)
    all_states = plain.bert(Tensor(full_ids), Tensor(full_mask)).asnumpy()
    assert text_states.shape == (2, 4, BERT_CONFIG.hidden_size)
    np.testing.assert_allclose(text_states, all_states[:, 3:], rtol=1e-5, atol=1e-5)


def test_bert_hook_checks_the_cell():
    net = BertClassifier(BERT_CONFIG, 2)
    with pytest.raises(TypeError, match="'cell'"):
        net.set_virtual_tokens("prompt")
    with pytest.raises(ValueError, match="'cell'.*token_dim 16"):
        net.set_virtual_tokens(PromptTuningEmbedding(2, 8))


@pytest.mark.parametrize("method, options", [
    ("prompt_tuning", {"num_virtual_tokens": 3, "prompt_tuning_init": "TEXT", "prompt_tuning_init_token_ids": [4]}),
    ("ptuning", {"num_virtual_tokens": 3, "encoder_hidden_size": 8}),
])
def test_example_bert_trains_only_the_prompt_and_the_head(method, options):
    net = BertClassifier(BERT_CONFIG, 2)
    trainable = apply_method(net, method, **options)
    assert trainable and all(name.startswith("classifier.") or
                             name.startswith("bert.embeddings.virtual_tokens.mindpet_delta_") for name in trainable)
    assert any(name.startswith("classifier.") for name in trainable)
    ids = Tensor(steering_batches(1)[0][0] % BERT_CONFIG.vocab_size)
    assert net(ids, Tensor(np.ones((BATCH, SEQ_LENGTH), np.int32))).shape == (BATCH, 2)
