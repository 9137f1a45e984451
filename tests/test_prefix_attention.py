"""PrefixConcat: prefix keys and values go first, the mask gains always-visible prefix columns, shapes are checked."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

import tiny_decoder
from mindpet.delta.prefix_attention import PrefixConcat
from prefix_helpers import numpy_causal_attention_with_prefix

BATCH, HEADS, SEQ, HEAD_DIM, PREFIX = 2, 3, 5, 4, 2
RNG = np.random.default_rng(0)
KEY = RNG.standard_normal((BATCH, HEADS, SEQ, HEAD_DIM)).astype(np.float32)
VALUE = RNG.standard_normal((BATCH, HEADS, SEQ, HEAD_DIM)).astype(np.float32)
PREFIX_KEY_VALUE = RNG.standard_normal((2, BATCH, HEADS, PREFIX, HEAD_DIM)).astype(np.float32)
CAUSAL = np.tril(np.ones((SEQ, SEQ), np.float32))


def concat(attention_mask=None, attend_value=1, key=KEY, value=VALUE, prefix_key_value=PREFIX_KEY_VALUE):
    mask = None if attention_mask is None else Tensor(attention_mask)
    outputs = PrefixConcat(attend_value)(Tensor(key), Tensor(value), Tensor(prefix_key_value), mask)
    return [None if output is None else output.asnumpy() for output in outputs]


def expected_mask(attention_mask, attend_value):
    """The mask with PREFIX leading columns of ``attend_value``, built column by column."""
    out = np.empty(attention_mask.shape[:-1] + (PREFIX + SEQ,), attention_mask.dtype)
    for column in range(PREFIX + SEQ):
        out[..., column] = attend_value if column < PREFIX else attention_mask[..., column - PREFIX]
    return out


def test_prefix_goes_before_the_key_and_value(mode):
    key, value, mask = concat()
    assert key.shape == value.shape == (BATCH, HEADS, PREFIX + SEQ, HEAD_DIM)
    assert np.array_equal(key[:, :, :PREFIX], PREFIX_KEY_VALUE[0])
    assert np.array_equal(key[:, :, PREFIX:], KEY)
    assert np.array_equal(value[:, :, :PREFIX], PREFIX_KEY_VALUE[1])
    assert np.array_equal(value[:, :, PREFIX:], VALUE)
    assert mask is None


@pytest.mark.parametrize("mask_shape", [(BATCH, SEQ, SEQ), (1, SEQ, SEQ), (BATCH, 1, SEQ, SEQ), (1, 1, SEQ, SEQ),
                                        (BATCH, HEADS, SEQ, SEQ), (BATCH, 1, 1, SEQ)])
def test_mask_layouts_gain_visible_prefix_columns(mode, mask_shape):
    attention_mask = np.broadcast_to(CAUSAL[-mask_shape[-2]:], mask_shape).copy()
    attention_mask[0, ..., 0] = 0
    _, _, mask = concat(attention_mask)
    assert mask.dtype == np.float32
    assert np.array_equal(mask, expected_mask(attention_mask, 1))


def test_boolean_and_additive_masks(mode):
    bool_mask = np.broadcast_to(CAUSAL.astype(bool), (BATCH, 1, SEQ, SEQ))
    assert np.array_equal(concat(bool_mask)[2], expected_mask(bool_mask, True))
    additive_mask = np.where(bool_mask, 0.0, -1e4).astype(np.float16)
    mask = concat(additive_mask, attend_value=0)[2]
    assert mask.dtype == np.float16 and np.array_equal(mask, expected_mask(additive_mask, 0))


def test_prefix_is_cast_to_the_key_dtype(mode):
    key, value, _ = concat(key=KEY.astype(np.float16), value=VALUE.astype(np.float16))
    assert key.dtype == value.dtype == np.float16
    assert np.array_equal(key[:, :, :PREFIX], PREFIX_KEY_VALUE[0].astype(np.float16))


def test_attention_with_prefix_matches_numpy(mode):
    """In the tiny decoder's attention every query sees every prefix position and the tokens up to itself."""
    attention = tiny_decoder.CausalSelfAttention(tiny_decoder.HIDDEN_SIZE, tiny_decoder.NUM_HEADS)
    head_dim = tiny_decoder.HIDDEN_SIZE // tiny_decoder.NUM_HEADS
    rng = np.random.default_rng(4)
    x = rng.standard_normal((BATCH, tiny_decoder.SEQ_LENGTH, tiny_decoder.HIDDEN_SIZE))
    prefix_key_value = rng.standard_normal((2, BATCH, tiny_decoder.NUM_HEADS, 3, head_dim))
    causal = Tensor(np.tril(np.ones((tiny_decoder.SEQ_LENGTH,) * 2))[None, None], ms.float32)
    output = attention(Tensor(x, ms.float32), causal, Tensor(prefix_key_value, ms.float32)).asnumpy()
    expected = numpy_causal_attention_with_prefix(x, attention, prefix_key_value)
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arguments, message", [
    ({"key": KEY[0]}, r"'key' must be a Tensor of shape \(batch, num_heads, seq_length, head_dim\)"),
    ({"value": VALUE[:, :, :-1]}, r"'value' must be a Tensor of the key's shape \(2, 3, 5, 4\)"),
    ({"prefix_key_value": PREFIX_KEY_VALUE[0]}, (r"'prefix_key_value' must be a Tensor of shape \(2, 2, 3, "
                                                  r"prefix_length, 4\) to match the key, but got a Tensor of shape "
                                                  r"\(2, 3, 2, 4\)\.")),
    ({"prefix_key_value": PREFIX_KEY_VALUE[:, :, :2]}, "'prefix_key_value' must be"),
    ({"prefix_key_value": PREFIX_KEY_VALUE[..., :2]}, "'prefix_key_value' must be"),
    ({"prefix_key_value": np.concatenate([PREFIX_KEY_VALUE, PREFIX_KEY_VALUE])}, "'prefix_key_value' must be"),
    ({"attention_mask": CAUSAL}, r"'attention_mask' must be a Tensor of shape \(batch, query_length, 5\)"),
    ({"attention_mask": CAUSAL[None, :, :-1]}, "'attention_mask' must be"),
    ({"attention_mask": np.ones((3, SEQ, SEQ), np.float32)}, "'attention_mask' must be"),
    ({"attention_mask": np.ones((BATCH, 2, SEQ, SEQ), np.float32)}, "'attention_mask' must be"),
])
def test_shapes_are_checked(mode, arguments, message):
    with pytest.raises(ValueError, match=f"For 'PrefixConcat', the argument {message}"):
        concat(**arguments)


@pytest.mark.parametrize("bad_value", [True, "1", None])
def test_attend_value_must_be_a_number(bad_value):
    with pytest.raises(TypeError, match="For 'PrefixConcat', the argument 'attend_value' must be an int or a float"):
        PrefixConcat(bad_value)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -np.inf])
def test_attend_value_must_be_finite(bad_value):
    """
    Feature: attend_value check.
    Description: NaN and infinite mask values, which would turn every attention score they touch into NaN.
    Expectation: ValueError naming 'attend_value'.
    """
    with pytest.raises(ValueError, match="'attend_value' must be a finite number"):
        PrefixConcat(bad_value)


@pytest.mark.parametrize("argument, position, bad_input, type_name", [
    ("key", 0, None, "NoneType"),
    ("value", 1, VALUE, "ndarray"),
    ("prefix_key_value", 2, PREFIX_KEY_VALUE, "ndarray"),
    ("prefix_key_value", 2, None, "NoneType"),
    ("attention_mask", 3, CAUSAL[None], "ndarray"),
])
def test_inputs_must_be_tensors(mode, argument, position, bad_input, type_name):
    """
    Feature: Input type checks, GRAPH and PYNATIVE.
    Description: Pass None or a NumPy array for one input.
    Expectation: TypeError naming that input and what came, not an error from deep inside MindSpore.
    """
    inputs = [Tensor(KEY), Tensor(VALUE), Tensor(PREFIX_KEY_VALUE), Tensor(CAUSAL[None])]
    inputs[position] = bad_input
    with pytest.raises(TypeError, match=f"the input '{argument}' must be a mindspore Tensor, but got {type_name}"):
        PrefixConcat()(*inputs)


def test_shard_sets_strategies_and_returns_self():
    cell = PrefixConcat()
    assert cell.shard(data_parallel=2, model_parallel=3) is cell
    assert cell.unstack.in_strategy == ((1, 2, 3, 1, 1),)
    assert cell.key_concat.in_strategy == ((2, 3, 1, 1), (2, 3, 1, 1))
    assert cell.mask_concat_3d.in_strategy == ((2, 1, 1), (2, 1, 1))
    assert cell.mask_concat_4d.in_strategy == ((2, 1, 1, 1), (2, 1, 1, 1))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"data_parallel": 1.5}, TypeError, "'data_parallel' must be an int"),
    ({"model_parallel": 0}, ValueError, "'model_parallel' must be a positive int"),
])
def test_shard_arguments_are_checked(kwargs, error, message):
    with pytest.raises(error, match=message):
        PrefixConcat().shard(**kwargs)


def test_padded_keys_stay_invisible_next_to_the_prefix(mode):
    """A decoder with P-Tuning v2 prefixes and left padding: what stands in the padded positions must not change
    the outputs at the real ones, so the widened mask still hides padding while showing the prefix."""
    net = tiny_decoder.TinyDecoderWithPTuning2(pre_seq_len=3)
    net.set_train(False)
    pad = 3
    input_ids = np.random.default_rng(6).integers(0, tiny_decoder.VOCAB_SIZE, (2, tiny_decoder.SEQ_LENGTH))
    other_padding = input_ids.copy()
    other_padding[:, :pad] = (other_padding[:, :pad] + 7) % tiny_decoder.VOCAB_SIZE
    padding_mask = Tensor(np.arange(tiny_decoder.SEQ_LENGTH)[None].repeat(2, axis=0) >= pad, ms.float32)
    first = net(Tensor(input_ids, ms.int32), padding_mask).asnumpy()
    second = net(Tensor(other_padding, ms.int32), padding_mask).asnumpy()
    np.testing.assert_allclose(first[:, pad:], second[:, pad:], rtol=1e-6, atol=1e-6)
    assert not np.allclose(first[:, :pad], second[:, :pad])
