"""PrefixLayer: formula and layout against NumPy, gradients, errors, sharding, and Prefix-Tuning of a frozen
decoder with Model.train, TrainableParamsCheckPoint and load_delta_checkpoint."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

import tiny_decoder
from mindpet.delta import PrefixLayer
from mindpet.graph import freeze_delta
from prefix_helpers import (all_params_nonzero, assert_delta_file_holds_exactly_the_trained_values,
                            assert_only_the_trainable_parameters_changed, fine_tune, lm_loss_gradients,
                            numpy_causal_attention_with_prefix, numpy_layout, numpy_mlp, parameter_gradients,
                            reload_outputs_match)

PREFIX_TOKEN_NUM, BATCH, HEADS, HIDDEN, EMBED, MID = 12, 3, 2, 8, 5, 6
PREFIX_LENGTH, HEAD_DIM = PREFIX_TOKEN_NUM // BATCH, HIDDEN // HEADS
OUTPUT_SHAPE = (2, BATCH, HEADS, PREFIX_LENGTH, HEAD_DIM)
PARAM_NAMES = ["mindpet_delta_prefix_dense_in.bias", "mindpet_delta_prefix_dense_in.weight",
               "mindpet_delta_prefix_dense_out.bias", "mindpet_delta_prefix_dense_out.weight",
               "mindpet_delta_prefix_embedding.embedding_table"]
VALID_ARGS = {"prefix_token_num": PREFIX_TOKEN_NUM, "batch_size": BATCH, "num_heads": HEADS, "hidden_dim": HIDDEN,
              "embed_dim": EMBED, "mid_dim": MID, "dropout_rate": 0.0}
# The tiny decoder's prefix layers: 4 prefix positions per sample at the training batch size.
DECODER_PREFIX = {"embed_dim": 16, "mid_dim": 32, "dropout_rate": 0.0}


def make_prefix(**overrides):
    return PrefixLayer(**{**VALID_ARGS, **overrides})


def reference(prefix, batch_size):
    """The prefixes from the layer's own parameters, computed in NumPy."""
    rows = numpy_mlp(prefix.mindpet_delta_prefix_embedding.embedding_table.asnumpy().astype(np.float64),
                     prefix.mindpet_delta_prefix_dense_in, prefix.mindpet_delta_prefix_dense_out)
    return numpy_layout(rows, 1, HEADS, HEAD_DIM, batch_size)


def decoder_with_prefix_layers(batch_size):
    layers = [PrefixLayer(4 * batch_size, batch_size, tiny_decoder.NUM_HEADS, tiny_decoder.HIDDEN_SIZE,
                          **DECODER_PREFIX) for _ in range(tiny_decoder.NUM_LAYERS)]
    return tiny_decoder.TinyDecoder(prefix_layers=layers)


def test_output_matches_numpy_reference(mode):
    prefix = make_prefix()
    output = prefix()
    assert output.shape == OUTPUT_SHAPE and output.dtype == ms.float32
    np.testing.assert_allclose(output.asnumpy(), reference(prefix, BATCH), rtol=1e-5, atol=1e-6)


def test_call_batch_size_overrides_the_default_and_every_sample_gets_the_same_prefix(mode):
    prefix = make_prefix()
    output = prefix(5).asnumpy()
    assert output.shape == (2, 5, HEADS, PREFIX_LENGTH, HEAD_DIM)
    np.testing.assert_allclose(output, reference(prefix, 5), rtol=1e-5, atol=1e-6)
    for sample in range(1, 5):
        assert np.array_equal(output[:, sample], output[:, 0])


def test_key_and_value_prefixes_differ_and_match_the_manual_attributes(mode):
    prefix = make_prefix()
    output = prefix().asnumpy()
    assert not np.allclose(output[0], output[1])
    assert np.array_equal(prefix.past_key_reparam.asnumpy(), output[0])
    assert np.array_equal(prefix.past_value_reparam.asnumpy(), output[1])
    assert (prefix.prefix_token_num, prefix.batch_size, prefix.num_heads) == (PREFIX_TOKEN_NUM, BATCH, HEADS)
    assert (prefix.prefix_length, prefix.head_dim) == (PREFIX_LENGTH, HEAD_DIM)


def test_prefixes_follow_the_parameters_on_every_call():
    """MindPet 1.0.4 computed the prefixes once at construction, so they never changed; these follow the weights."""
    prefix = make_prefix()
    before = prefix().asnumpy()
    table = prefix.mindpet_delta_prefix_embedding.embedding_table
    table.set_data(Tensor(table.asnumpy() + 1.0))
    after = prefix().asnumpy()
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, reference(prefix, BATCH), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prefix.past_key_reparam.asnumpy(), after[0], rtol=1e-6)


def test_gradients_reach_every_parameter(mode):
    prefix = make_prefix()
    assert sorted(param.name for param in prefix.trainable_params()) == PARAM_NAMES
    nonzero = all_params_nonzero(parameter_gradients(prefix, [OUTPUT_SHAPE]))
    assert nonzero == dict.fromkeys(PARAM_NAMES, True)


def test_dropout_scales_kept_entries_with_a_mask_per_sample(mode):
    prefix = make_prefix(dropout_rate=0.5)
    prefix.set_train(False)
    expected = reference(prefix, BATCH)
    np.testing.assert_allclose(prefix().asnumpy(), expected, rtol=1e-5, atol=1e-6)
    prefix.set_train(True)
    dropped = prefix().asnumpy()
    kept = dropped != 0
    assert 0.2 < kept.mean() < 0.8
    np.testing.assert_allclose(dropped[kept], 2.0 * expected[kept], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(kept[:, 0], kept[:, 1])


def test_attention_block_with_prefix_layer_matches_numpy(mode):
    net = decoder_with_prefix_layers(batch_size=2)
    attention = net.blocks[0].attention
    x = np.random.default_rng(1).standard_normal((2, tiny_decoder.SEQ_LENGTH, tiny_decoder.HIDDEN_SIZE))
    causal = Tensor(np.tril(np.ones((tiny_decoder.SEQ_LENGTH,) * 2))[None, None], ms.float32)
    output = attention(Tensor(x, ms.float32), causal).asnumpy()
    prefix_key_value = attention.prefix_layer(2).asnumpy().astype(np.float64)
    expected = numpy_causal_attention_with_prefix(x, attention, prefix_key_value)
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)


def test_gradients_of_the_decoder_loss_reach_every_prefix_parameter(mode):
    net = decoder_with_prefix_layers(batch_size=4)
    trainable = freeze_delta(net, "prefix")
    assert trainable == sorted(f"blocks.{block}.attention.prefix_layer.{name}"
                               for block in range(tiny_decoder.NUM_LAYERS) for name in PARAM_NAMES)
    grads = lm_loss_gradients(net)
    assert sorted(grads) == trainable
    assert all(all_params_nonzero(grads).values()), all_params_nonzero(grads)


@pytest.mark.parametrize("arg_name", ["prefix_token_num", "batch_size", "num_heads", "hidden_dim", "embed_dim",
                                      "mid_dim"])
@pytest.mark.parametrize("bad_value, error", [(2.0, TypeError), (True, TypeError), ("4", TypeError),
                                              (0, ValueError), (-4, ValueError)])
def test_positive_int_arguments_are_checked(arg_name, bad_value, error):
    with pytest.raises(error, match=f"For 'PrefixLayer', the argument '{arg_name}' must be"):
        make_prefix(**{arg_name: bad_value})


@pytest.mark.parametrize("bad_rate, error", [(1.0, ValueError), (-0.1, ValueError), (1, TypeError),
                                             ("0.1", TypeError), (None, TypeError)])
def test_dropout_rate_is_checked(bad_rate, error):
    with pytest.raises(error, match="For 'PrefixLayer', the argument 'dropout_rate' must be"):
        make_prefix(dropout_rate=bad_rate)


def test_prefix_token_num_must_be_a_multiple_of_batch_size():
    with pytest.raises(ValueError, match=r"'prefix_token_num' must be a multiple of batch_size \(3\), but got 10"):
        make_prefix(prefix_token_num=10)


def test_hidden_dim_must_be_a_multiple_of_num_heads():
    with pytest.raises(ValueError, match=r"'hidden_dim' must be a multiple of num_heads \(3\), but got 8"):
        make_prefix(num_heads=3)


@pytest.mark.parametrize("bad_batch, error", [(0, ValueError), (2.0, TypeError)])
def test_call_batch_size_is_checked(mode, bad_batch, error):
    with pytest.raises(error, match="For 'PrefixLayer', the argument 'batch_size' must be"):
        make_prefix()(bad_batch)


def test_shard_sets_strategies_returns_self_and_changes_no_numbers():
    prefix = make_prefix(mid_dim=8)
    before = prefix().asnumpy()
    assert prefix.shard(data_parallel=3, model_parallel=2) is prefix
    assert prefix.tile.in_strategy == ((1, 3, 2, 1, 1),)
    assert prefix.dropout.dropout.in_strategy == ((1, 3, 2, 1, 1),)
    assert prefix.mindpet_delta_prefix_dense_in.matmul.in_strategy == ((1, 1), (2, 1))
    assert prefix.mindpet_delta_prefix_dense_out.matmul.in_strategy == ((1, 2), (1, 2))
    assert np.array_equal(prefix().asnumpy(), before)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"data_parallel": 0}, ValueError, "'data_parallel' must be a positive int"),
    ({"model_parallel": 1.0}, TypeError, "'model_parallel' must be an int"),
    ({"model_parallel": 4}, ValueError, r"'model_parallel' must be a divisor of num_heads \(2\)"),
    ({"model_parallel": 2}, ValueError, r"'model_parallel' must be a divisor of the MLP hidden size \(5\)"),
])
def test_shard_arguments_are_checked(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_prefix(mid_dim=5).shard(**kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return fine_tune(lambda: decoder_with_prefix_layers(batch_size=16), "prefix", tmp_path_factory.mktemp("prefix"),
                     learning_rate=2e-2)


def test_prefix_tuning_lowers_the_loss_below_half(trained):
    assert trained["end_loss"] < 0.5 * trained["start_loss"], (trained["start_loss"], trained["end_loss"])


def test_frozen_parameters_stay_bit_identical_and_every_prefix_parameter_trains(trained):
    assert_only_the_trainable_parameters_changed(trained)


def test_delta_checkpoint_holds_exactly_the_prefix_parameters(trained):
    assert_delta_file_holds_exactly_the_trained_values(trained)


def test_delta_checkpoint_reloads_into_a_fresh_decoder_exactly(trained, mode):
    assert reload_outputs_match(trained, decoder_with_prefix_layers(batch_size=16), "prefix")
