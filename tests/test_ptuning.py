"""P-tuning v1: PromptEncoder's MLP and bidirectional LSTM against NumPy, in both modes and compute dtypes, steering a
frozen model, the errors, sharding, and PTuningConfig."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from mindpet import PTuningConfig, config_from_dict
from mindpet.delta import PromptEncoder
from mindpet.graph import freeze_delta
from virtual_token_helpers import (WIDTH, SteeredModel, assert_gradients_reach_only, assert_steering_trained,
                                   train_steering)

TOKENS, HIDDEN = 4, 5
EMBEDDING = "mindpet_delta_ptuning_embedding"
DENSE_NAMES = ["mindpet_delta_ptuning_dense_hidden", "mindpet_delta_ptuning_dense_out"]


def _dense(cell, x):
    return x @ cell.weight.asnumpy().astype(np.float64).T + cell.bias.asnumpy()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm_direction(inputs, params, suffix):
    """One direction of one LSTM layer over ``inputs (seq, in)``, gates in PyTorch's order (input, forget, cell,
    output), both biases added."""
    w_ih, w_hh, b_ih, b_hh = (params[name + suffix].astype(np.float64) for name in ("weight_ih", "weight_hh",
                                                                                      "bias_ih", "bias_hh"))
    hidden = np.zeros(w_hh.shape[1])
    cell = np.zeros(w_hh.shape[1])
    outputs = []
    for x in inputs:
        gate_in, gate_forget, candidate, gate_out = np.split(w_ih @ x + b_ih + w_hh @ hidden + b_hh, 4)
        cell = _sigmoid(gate_forget) * cell + _sigmoid(gate_in) * np.tanh(candidate)
        hidden = _sigmoid(gate_out) * np.tanh(cell)
        outputs.append(hidden)
    return np.stack(outputs)


def numpy_bidirectional_lstm(inputs, lstm, num_layers):
    params = {param.name.split(".")[-1]: param.asnumpy() for param in lstm.get_parameters()}
    for layer in range(num_layers):
        forward = numpy_lstm_direction(inputs, params, f"_l{layer}")
        backward = numpy_lstm_direction(inputs[::-1], params, f"_l{layer}_reverse")[::-1]
        inputs = np.concatenate([forward, backward], axis=1)
    return inputs


def reference(encoder):
    """The encoder's output ``(num_virtual_tokens, token_dim)`` from its own parameters, in float64."""
    table = getattr(encoder, EMBEDDING).asnumpy().astype(np.float64)
    if encoder.use_lstm:
        hidden = numpy_bidirectional_lstm(table, encoder.mindpet_delta_ptuning_lstm, encoder.encoder_num_layers)
    else:
        hidden = np.maximum(_dense(encoder.mindpet_delta_ptuning_dense_in, table), 0)
    hidden = np.maximum(_dense(encoder.mindpet_delta_ptuning_dense_hidden, hidden), 0)
    return _dense(encoder.mindpet_delta_ptuning_dense_out, hidden)


ENCODERS = [("MLP", 2), ("LSTM", 1), ("LSTM", 2)]


@pytest.mark.parametrize("compute_dtype", [ms.float32, ms.float16])
@pytest.mark.parametrize("encoder_type, num_layers", ENCODERS)
def test_output_matches_numpy(mode, encoder_type, num_layers, compute_dtype):
    encoder = PromptEncoder(TOKENS, WIDTH, HIDDEN, encoder_reparameterization_type=encoder_type,
                            encoder_num_layers=num_layers, compute_dtype=compute_dtype)
    expected = reference(encoder)
    assert np.abs(expected).min() > 0
    output = encoder(3)
    assert output.shape == (3, TOKENS, WIDTH) and output.dtype == ms.float32
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if compute_dtype == ms.float32 else {"rtol": 1e-2, "atol": 2e-3}
    np.testing.assert_allclose(output.asnumpy(), np.broadcast_to(expected, (3, TOKENS, WIDTH)), **tolerance)
    np.testing.assert_allclose(encoder.virtual_token_embeddings().asnumpy(), expected, **tolerance)
    assert encoder(2, ms.float16).dtype == ms.float16


def test_float16_parameters(mode):
    encoder = PromptEncoder(TOKENS, WIDTH, HIDDEN, encoder_reparameterization_type="LSTM", encoder_num_layers=1,
                            param_init_type=ms.float16)
    assert {param.dtype for param in encoder.get_parameters()} == {ms.float16}
    np.testing.assert_allclose(encoder(2).asnumpy()[0], reference(encoder), rtol=2e-2, atol=5e-3)


@pytest.mark.parametrize("encoder_type", ["MLP", "LSTM"])
def test_gradients_reach_only_the_encoder(mode, encoder_type):
    model = SteeredModel(PromptEncoder(TOKENS, WIDTH, HIDDEN, encoder_reparameterization_type=encoder_type,
                                       compute_dtype=ms.float32))
    delta = freeze_delta(model, "ptuning")
    assert f"virtual_tokens.{EMBEDDING}" in delta and len(delta) == 1 + (16 + 4 if encoder_type == "LSTM" else 6)
    assert_gradients_reach_only(model, delta)


@pytest.mark.parametrize("encoder_type", ["MLP", "LSTM"])
def test_ptuning_steers_a_frozen_model(graph_mode, encoder_type):
    lstm_layers = {"encoder_num_layers": 1} if encoder_type == "LSTM" else {}
    encoder = PromptEncoder(TOKENS, WIDTH, HIDDEN, encoder_reparameterization_type=encoder_type,
                            compute_dtype=ms.float32, **lstm_layers)
    names = [f"virtual_tokens.{name}" for name, _ in encoder.parameters_and_names()]
    assert_steering_trained(train_steering(encoder, "ptuning", lr=0.02), names)


@pytest.mark.parametrize("kwargs, error, arg_name", [
    ({"encoder_hidden_size": 0}, ValueError, "encoder_hidden_size"),
    ({"encoder_hidden_size": None}, TypeError, "encoder_hidden_size"),
    ({"token_dim": "8"}, TypeError, "token_dim"),
    ({"num_virtual_tokens": -1}, ValueError, "num_virtual_tokens"),
    ({"encoder_reparameterization_type": "GRU"}, ValueError, "encoder_reparameterization_type"),
    ({"encoder_reparameterization_type": 1}, TypeError, "encoder_reparameterization_type"),
    ({"encoder_num_layers": 3}, ValueError, "encoder_num_layers"),
    ({"encoder_dropout": 0.1}, ValueError, "encoder_dropout"),
    ({"encoder_reparameterization_type": "LSTM", "encoder_num_layers": 0}, ValueError, "encoder_num_layers"),
    ({"encoder_reparameterization_type": "LSTM", "encoder_dropout": 1.0}, ValueError, "encoder_dropout"),
    ({"encoder_reparameterization_type": "LSTM", "encoder_dropout": "0.1"}, TypeError, "encoder_dropout"),
    ({"compute_dtype": ms.int8}, TypeError, "compute_dtype"),
    ({"param_init_type": "float32"}, TypeError, "param_init_type"),
])
def test_errors_name_the_argument(kwargs, error, arg_name):
    args = {"num_virtual_tokens": TOKENS, "token_dim": WIDTH, "encoder_hidden_size": HIDDEN, **kwargs}
    with pytest.raises(error, match=f"'PromptEncoder'.*'{arg_name}'"):
        PromptEncoder(**args)
    config_args = {key: value for key, value in args.items() if key not in ("compute_dtype", "param_init_type")}
    if config_args != args:
        return
    with pytest.raises(error, match=f"'PTuningConfig'.*'{arg_name}'"):
        PTuningConfig(**config_args)


def test_lstm_options_apply_to_the_lstm():
    encoder = PromptEncoder(TOKENS, WIDTH, HIDDEN, encoder_reparameterization_type="lstm", encoder_num_layers=3,
                            encoder_dropout=0.2)
    lstm = encoder.mindpet_delta_ptuning_lstm
    assert encoder.encoder_type == "LSTM" and lstm.num_layers == 3 and lstm.bidirectional
    assert encoder.mindpet_delta_ptuning_dense_hidden.in_channels == 2 * HIDDEN
    assert not hasattr(encoder, "mindpet_delta_ptuning_dense_in")


@pytest.mark.parametrize("encoder_type, splits, width, bad_degree", [("MLP", "dense_in", 6, 4),
                                                                      ("LSTM", "dense_hidden", 12, 5)])
def test_shard_splits_the_dense_hidden_units_and_the_batch(encoder_type, splits, width, bad_degree):
    encoder = PromptEncoder(TOKENS, WIDTH, 6, encoder_reparameterization_type=encoder_type)
    before = encoder.virtual_token_embeddings().asnumpy()
    assert encoder.shard(data_parallel=2, model_parallel=2) is encoder
    assert getattr(encoder, f"mindpet_delta_ptuning_{splits}").matmul.in_strategy == ((1, 1), (2, 1))
    assert encoder.tile.in_strategy == ((2, 1, 1),)
    np.testing.assert_array_equal(encoder.virtual_token_embeddings().asnumpy(), before)
    with pytest.raises(ValueError, match=f"'PromptEncoder'.*'model_parallel'.*\\({width}\\)"):
        encoder.shard(model_parallel=bad_degree)


def test_config_round_trips_and_builds_the_cell():
    config = PTuningConfig(num_virtual_tokens=TOKENS, token_dim=WIDTH, encoder_hidden_size=HIDDEN,
                           encoder_reparameterization_type="Lstm", encoder_num_layers=1, modules_to_save=["head"])
    assert config.encoder_reparameterization_type == "LSTM"
    assert config_from_dict(config.to_dict()) == config
    cell = config.make_cell()
    assert isinstance(cell, PromptEncoder) and cell.use_lstm and cell.encoder_num_layers == 1
    assert cell.virtual_token_embeddings().shape == (TOKENS, WIDTH)


def test_virtual_token_embeddings_is_computed_without_dropout_and_keeps_the_training_state():
    encoder = PromptEncoder(TOKENS, WIDTH, HIDDEN, encoder_reparameterization_type="LSTM", encoder_dropout=0.5,
                            compute_dtype=ms.float32)
    encoder.set_train(True)
    first = encoder.virtual_token_embeddings().asnumpy()
    assert encoder.training
    np.testing.assert_array_equal(encoder.virtual_token_embeddings().asnumpy(), first)
    np.testing.assert_allclose(first, reference(encoder), rtol=1e-5, atol=1e-6)


def test_cells_in_a_list_get_distinct_names():
    cells = nn.CellList([PromptEncoder(2, 4, 3), PromptEncoder(2, 4, 3)])
    names = [param.name for param in cells.get_parameters()]
    assert len(names) == len(set(names)) and all(name.startswith(("0.", "1.")) for name in names)
