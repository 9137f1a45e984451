"""PrefixEncoder: layout against NumPy with and without projection, gradients, errors, sharding, and P-Tuning v2
of a frozen decoder with Model.train, TrainableParamsCheckPoint and load_delta_checkpoint."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

import tiny_decoder
from mindpet.delta import PrefixEncoder
from mindpet.graph import freeze_delta, load_delta_checkpoint
from prefix_helpers import (all_params_nonzero, assert_delta_file_holds_exactly_the_trained_values,
                            assert_only_the_trainable_parameters_changed, fine_tune, lm_loss_gradients, numpy_layout,
                            numpy_mlp, parameter_gradients, reload_outputs_match)

PRE_SEQ_LEN, LAYERS, HEADS, KV_CHANNELS, PROJECTION, BATCH = 3, 2, 2, 4, 6, 5
ROW_WIDTH = LAYERS * 2 * HEADS * KV_CHANNELS
LAYER_SHAPE = (2, BATCH, HEADS, PRE_SEQ_LEN, KV_CHANNELS)
TABLE = "mindpet_delta_ptuning2_embedding.embedding_table"
MLP_NAMES = ["mindpet_delta_ptuning2_dense_in.bias", "mindpet_delta_ptuning2_dense_in.weight",
             "mindpet_delta_ptuning2_dense_out.bias", "mindpet_delta_ptuning2_dense_out.weight"]
PRE_SEQ_LEN_IN_DECODER = 4


def make_encoder(**overrides):
    args = {"pre_seq_len": PRE_SEQ_LEN, "num_layers": LAYERS, "num_heads": HEADS, "kv_channels": KV_CHANNELS}
    return PrefixEncoder(**{**args, **overrides})


def table_of(encoder):
    return encoder.mindpet_delta_ptuning2_embedding.embedding_table


def reference(encoder, batch_size):
    """The per-layer prefixes from the encoder's own parameters, computed in NumPy."""
    rows = table_of(encoder).asnumpy().astype(np.float64)
    if encoder.prefix_projection:
        rows = numpy_mlp(rows, encoder.mindpet_delta_ptuning2_dense_in, encoder.mindpet_delta_ptuning2_dense_out)
    blocks = numpy_layout(rows, LAYERS, HEADS, KV_CHANNELS, batch_size)
    return [blocks[2 * layer:2 * layer + 2] for layer in range(LAYERS)]


def assert_matches_reference(encoder, batch_size):
    outputs = encoder(batch_size)
    assert isinstance(outputs, tuple) and len(outputs) == LAYERS
    for output, expected in zip(outputs, reference(encoder, batch_size)):
        assert output.shape == (2, batch_size, HEADS, PRE_SEQ_LEN, KV_CHANNELS) and output.dtype == ms.float32
        np.testing.assert_allclose(output.asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_table_rows_are_laid_out_layer_by_layer_key_before_value(mode):
    encoder = make_encoder()
    table = np.arange(PRE_SEQ_LEN * ROW_WIDTH, dtype=np.float32).reshape(PRE_SEQ_LEN, ROW_WIDTH)
    table_of(encoder).set_data(Tensor(table))
    outputs = [output.asnumpy() for output in encoder(BATCH)]
    # Row p of the table holds [layer 0 key | layer 0 value | layer 1 key | layer 1 value], heads of KV_CHANNELS.
    block = HEADS * KV_CHANNELS
    for layer, output in enumerate(outputs):
        for key_or_value in range(2):
            start = (2 * layer + key_or_value) * block
            expected = table[:, start:start + block].reshape(PRE_SEQ_LEN, HEADS, KV_CHANNELS).transpose(1, 0, 2)
            for sample in range(BATCH):
                assert np.array_equal(output[key_or_value, sample], expected)


def test_output_matches_numpy_reference_without_projection(mode):
    encoder = make_encoder()
    assert [param.name for param in encoder.trainable_params()] == [TABLE]
    assert table_of(encoder).shape == (PRE_SEQ_LEN, ROW_WIDTH)
    assert_matches_reference(encoder, BATCH)


def test_output_matches_numpy_reference_with_projection(mode):
    encoder = make_encoder(prefix_projection=True, projection_dim=PROJECTION)
    assert sorted(param.name for param in encoder.trainable_params()) == MLP_NAMES + [TABLE]
    assert encoder.mindpet_delta_ptuning2_dense_in.weight.shape == (PROJECTION, ROW_WIDTH)
    assert encoder.mindpet_delta_ptuning2_dense_out.weight.shape == (ROW_WIDTH, PROJECTION)
    assert_matches_reference(encoder, BATCH)


def test_every_sample_gets_the_same_prefix_and_keys_differ_from_values(mode):
    for output in make_encoder(prefix_projection=True, projection_dim=PROJECTION)(4):
        output = output.asnumpy()
        for sample in range(1, 4):
            assert np.array_equal(output[:, sample], output[:, 0])
        assert not np.allclose(output[0], output[1])


def test_dtype_argument_casts_the_outputs(mode):
    encoder = make_encoder()
    for output, expected in zip(encoder(BATCH, ms.float16), reference(encoder, BATCH)):
        assert output.dtype == ms.float16
        np.testing.assert_allclose(output.asnumpy(), expected, rtol=1e-3, atol=1e-3)


def test_dtype_argument_is_checked(mode):
    with pytest.raises(TypeError, match="For 'PrefixEncoder', the argument 'dtype' must be mindspore.float16 or"):
        make_encoder()(BATCH, ms.int32)


def test_a_mindpet_1_0_4_checkpoint_loads(tmp_path):
    """1.0.4 saved the table as 'mindpet_delta_ptuning2_embedding.embedding_table' and the MLP as nn.Dense cells
    'mindpet_delta_ptuning2_dense_in' and '..._dense_out', with the same shapes and row layout."""
    rng = np.random.default_rng(8)
    shapes = {"mindpet_delta_ptuning2_embedding.embedding_table": (PRE_SEQ_LEN, ROW_WIDTH),
              "mindpet_delta_ptuning2_dense_in.weight": (PROJECTION, ROW_WIDTH),
              "mindpet_delta_ptuning2_dense_in.bias": (PROJECTION,),
              "mindpet_delta_ptuning2_dense_out.weight": (ROW_WIDTH, PROJECTION),
              "mindpet_delta_ptuning2_dense_out.bias": (ROW_WIDTH,)}
    path = str(tmp_path / "ptuning2_1_0_4.ckpt")
    # Dense weights at the scale nn.Dense initializes them (1 / sqrt(fan_in)).
    ms.save_checkpoint([{"name": name, "data": Tensor(rng.standard_normal(shape) / np.sqrt(shape[-1]), ms.float32)}
                        for name, shape in shapes.items()], path)
    encoder = make_encoder(prefix_projection=True, projection_dim=PROJECTION)
    assert load_delta_checkpoint(encoder, path) == ([], [])
    saved = ms.load_checkpoint(path)
    for param in encoder.get_parameters():
        assert np.array_equal(param.asnumpy(), saved[param.name].asnumpy())
    assert_matches_reference(encoder, BATCH)


def test_single_layer_encoder_returns_a_one_tuple():
    outputs = make_encoder(num_layers=1)(2)
    assert isinstance(outputs, tuple) and len(outputs) == 1 and outputs[0].shape == (2, 2, HEADS, PRE_SEQ_LEN,
                                                                                       KV_CHANNELS)


@pytest.mark.parametrize("projection", [False, True])
def test_gradients_reach_every_parameter(mode, projection):
    encoder = make_encoder(prefix_projection=projection, projection_dim=PROJECTION)
    nonzero = all_params_nonzero(parameter_gradients(encoder, [LAYER_SHAPE] * LAYERS, BATCH))
    assert nonzero == dict.fromkeys([TABLE] + (MLP_NAMES if projection else []), True)


def test_dropout_draws_a_mask_per_sample_while_training(mode):
    encoder = make_encoder(dropout_prob=0.5)
    encoder.set_train(False)
    expected = reference(encoder, BATCH)[0]
    np.testing.assert_allclose(encoder(BATCH)[0].asnumpy(), expected, rtol=1e-5, atol=1e-6)
    encoder.set_train(True)
    dropped = encoder(BATCH)[0].asnumpy()
    kept = dropped != 0
    assert 0.2 < kept.mean() < 0.8
    np.testing.assert_allclose(dropped[kept], 2.0 * expected[kept], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(kept[:, 0], kept[:, 1])


def test_gradients_of_the_decoder_loss_reach_the_prefix_table(mode):
    net = tiny_decoder.TinyDecoderWithPTuning2(PRE_SEQ_LEN_IN_DECODER)
    assert freeze_delta(net, "ptuning2") == [f"prefix_encoder.{TABLE}"]
    grads = lm_loss_gradients(net)
    # Every layer's key and value block of every prefix position gets a gradient.
    blocks = numpy_layout(grads[f"prefix_encoder.{TABLE}"], tiny_decoder.NUM_LAYERS, tiny_decoder.NUM_HEADS,
                          tiny_decoder.HIDDEN_SIZE // tiny_decoder.NUM_HEADS, 1)
    assert np.all(np.abs(blocks).sum(axis=(1, 4)) > 0)


@pytest.mark.parametrize("arg_name", ["pre_seq_len", "num_layers", "num_heads", "kv_channels"])
@pytest.mark.parametrize("bad_value, error", [(2.0, TypeError), (True, TypeError), (None, TypeError),
                                              (0, ValueError), (-1, ValueError)])
def test_positive_int_arguments_are_checked(arg_name, bad_value, error):
    with pytest.raises(error, match=f"For 'PrefixEncoder', the argument '{arg_name}' must be"):
        make_encoder(**{arg_name: bad_value})


@pytest.mark.parametrize("bad_value, error", [(64.0, TypeError), (False, TypeError), (0, ValueError)])
def test_projection_dim_is_checked_when_projecting(bad_value, error):
    with pytest.raises(error, match="For 'PrefixEncoder', the argument 'projection_dim' must be"):
        make_encoder(prefix_projection=True, projection_dim=bad_value)


def test_projection_dim_is_ignored_without_projection():
    assert make_encoder(prefix_projection=False, projection_dim=None).trainable_params()[0].name == TABLE


@pytest.mark.parametrize("bad_value", [1, "yes", None])
def test_prefix_projection_must_be_a_bool(bad_value):
    with pytest.raises(TypeError, match="For 'PrefixEncoder', the argument 'prefix_projection' must be a bool"):
        make_encoder(prefix_projection=bad_value)


@pytest.mark.parametrize("bad_rate, error", [(1.0, ValueError), (-0.5, ValueError), (1, TypeError),
                                             ("0", TypeError)])
def test_dropout_prob_is_checked(bad_rate, error):
    with pytest.raises(error, match="For 'PrefixEncoder', the argument 'dropout_prob' must be"):
        make_encoder(dropout_prob=bad_rate)


@pytest.mark.parametrize("bad_batch, error", [(0, ValueError), (True, TypeError)])
def test_call_batch_size_is_checked(mode, bad_batch, error):
    with pytest.raises(error, match="For 'PrefixEncoder', the argument 'batch_size' must be"):
        make_encoder()(bad_batch)


def test_shard_sets_strategies_returns_self_and_changes_no_numbers():
    encoder = make_encoder(prefix_projection=True, projection_dim=PROJECTION)
    before = [output.asnumpy() for output in encoder(4)]
    assert encoder.shard(data_parallel=4, model_parallel=2) is encoder
    assert encoder.split_layers.in_strategy == ((1, 4, 2, 1, 1),)
    assert encoder.tile.in_strategy == ((1, 4, 2, 1, 1),)
    assert encoder.transpose.in_strategy == ((1, 1, 2, 1),)
    assert encoder.mindpet_delta_ptuning2_dense_in.bias_add.in_strategy == ((1, 2), (2,))
    for output, expected in zip(encoder(4), before):
        assert np.array_equal(output.asnumpy(), expected)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"data_parallel": False}, TypeError, "'data_parallel' must be an int"),
    ({"model_parallel": -2}, ValueError, "'model_parallel' must be a positive int"),
    ({"model_parallel": 4}, ValueError, r"'model_parallel' must be a divisor of num_heads \(2\)"),
])
def test_shard_arguments_are_checked(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_encoder().shard(**kwargs)


def test_shard_checks_projection_dim_against_model_parallel():
    with pytest.raises(ValueError, match=r"'model_parallel' must be a divisor of the MLP hidden size \(5\)"):
        make_encoder(prefix_projection=True, projection_dim=5).shard(model_parallel=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return fine_tune(lambda: tiny_decoder.TinyDecoderWithPTuning2(PRE_SEQ_LEN_IN_DECODER), "ptuning2",
                     tmp_path_factory.mktemp("ptuning2"), learning_rate=5e-2)


def test_ptuning2_lowers_the_loss_below_half(trained):
    assert trained["end_loss"] < 0.5 * trained["start_loss"], (trained["start_loss"], trained["end_loss"])


def test_frozen_parameters_stay_bit_identical_and_the_prefix_table_trains(trained):
    assert trained["trainable"] == [f"prefix_encoder.{TABLE}"]
    assert_only_the_trainable_parameters_changed(trained)


def test_delta_checkpoint_holds_exactly_the_prefix_table(trained):
    assert_delta_file_holds_exactly_the_trained_values(trained)


def test_delta_checkpoint_reloads_into_a_fresh_decoder_exactly(trained, mode):
    assert reload_outputs_match(trained, tiny_decoder.TinyDecoderWithPTuning2(PRE_SEQ_LEN_IN_DECODER), "ptuning2")
