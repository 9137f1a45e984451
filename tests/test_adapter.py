"""The four adapter cells against NumPy references of their formulas, their errors, and shard()."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindpet.delta import AdapterDense, AdapterLayer, LowRankAdapterDense, LowRankAdapterLayer
from mindpet.utils.activation import ActivationNotFoundError
from numpy_activations import REFERENCES

# in_channels is a multiple of 4 so the manual's shard() example, which splits it 4-way, is valid.
IN, HIDDEN, BOTTLENECK, REDUCTION, LOW_RANK = 12, 8, 3, 2, 2
KINDS = ("adapter_layer", "adapter_dense", "low_rank_layer", "low_rank_dense")


def branch_shapes(kind):
    """Shapes of the delta parameters, keyed by their name under the branch attribute."""
    biases = {"down_bias": (BOTTLENECK if kind.startswith("adapter") else HIDDEN // REDUCTION,), "up_bias": (HIDDEN,)}
    if kind.startswith("adapter"):
        return {"down_weight": (BOTTLENECK, HIDDEN), "up_weight": (HIDDEN, BOTTLENECK), **biases}
    width = HIDDEN // REDUCTION
    return {"down_weight_left": (HIDDEN, LOW_RANK), "down_weight_right": (LOW_RANK, width),
            "up_weight_left": (width, LOW_RANK), "up_weight_right": (LOW_RANK, HIDDEN), **biases}


def branch_of(cell):
    return cell.mindpet_delta_adapter if hasattr(cell, "mindpet_delta_adapter") else cell.mindpet_delta_low_rank_adapter


def random_weights(rng, kind):
    """Nonzero values for every parameter, the up-projection included, so the branch contributes."""
    weights = {name: rng.standard_normal(shape).astype(np.float32) * 0.5 for name, shape in branch_shapes(kind).items()}
    if kind.endswith("dense"):
        weights["weight"] = rng.standard_normal((HIDDEN, IN)).astype(np.float32) * 0.5
        weights["bias"] = rng.standard_normal(HIDDEN).astype(np.float32)
    return weights


def build(kind, weights=None, **kwargs):
    """A cell of ``kind``; with ``weights``, every parameter is set to them."""
    if kind.endswith("dense") and weights is not None:
        kwargs.update(weight_init=Tensor(weights["weight"]), bias_init=Tensor(weights["bias"]))
    cell = {"adapter_layer": lambda: AdapterLayer(HIDDEN, BOTTLENECK, **kwargs),
            "adapter_dense": lambda: AdapterDense(IN, HIDDEN, bottleneck_size=BOTTLENECK, **kwargs),
            "low_rank_layer": lambda: LowRankAdapterLayer(HIDDEN, REDUCTION, low_rank_size=LOW_RANK, **kwargs),
            "low_rank_dense": lambda: LowRankAdapterDense(IN, HIDDEN, reduction_factor=REDUCTION,
                                                          low_rank_size=LOW_RANK, **kwargs)}[kind]()
    if weights is not None:
        branch = branch_of(cell)
        for name in branch_shapes(kind):
            getattr(branch, name).set_data(Tensor(weights[name]).astype(getattr(branch, name).dtype))
    return cell


def adapter_input(kind, x, weights, activation=None):
    """What the adapter sees: the input itself, or the Dense layer's output, in float64."""
    h = x.astype(np.float64)
    if kind.endswith("dense"):
        h = h @ weights["weight"].astype(np.float64).T + weights["bias"]
        if activation is not None:
            h = REFERENCES[activation](h)
    return h


def reference(kind, x, weights, non_linearity, activation=None):
    """The documented formula in float64."""
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    h = adapter_input(kind, x, weights, activation)
    if kind.startswith("adapter"):
        down, up = w["down_weight"].T, w["up_weight"].T
    else:
        down, up = w["down_weight_left"] @ w["down_weight_right"], w["up_weight_left"] @ w["up_weight_right"]
    return h + REFERENCES[non_linearity](h @ down + w["down_bias"]) @ up + w["up_bias"]


def input_width(kind):
    return IN if kind.endswith("dense") else HIDDEN


CASES = [
    # (leading input dims, compute dtype, non_linearity)
    ((4,), ms.float32, "gelu"),
    ((2, 3), ms.float32, "relu"),
    ((2, 3), ms.float32, "tanh"),
    ((2, 3), ms.float16, "leakyrelu"),
    ((4,), ms.float16, "silu"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lead,compute_dtype,non_linearity", CASES)
def test_matches_numpy_reference(mode, kind, lead, compute_dtype, non_linearity):
    rng = np.random.default_rng(1)
    weights = random_weights(rng, kind)
    cell = build(kind, weights, non_linearity=non_linearity, compute_dtype=compute_dtype)
    x = rng.standard_normal(lead + (input_width(kind),)).astype(np.float32)
    out = cell(Tensor(x))
    assert out.shape == lead + (HIDDEN,) and out.dtype == ms.float32
    expected = reference(kind, x, weights, non_linearity)
    tolerance = 1e-5 if compute_dtype == ms.float32 else 3e-2
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=tolerance, atol=tolerance)
    # The branch is far above the tolerance, so the comparison checks the adapter and not just the residual.
    assert np.abs(expected - adapter_input(kind, x, weights)).max() > 0.5


@pytest.mark.parametrize("kind", ["adapter_dense", "low_rank_dense"])
def test_dense_activation_comes_before_the_adapter(mode, kind):
    rng = np.random.default_rng(2)
    weights = random_weights(rng, kind)
    cell = build(kind, weights, activation="tanh", non_linearity="relu", compute_dtype=ms.float32)
    x = rng.standard_normal((2, 3, IN)).astype(np.float32)
    # MindSpore's CPU Tanh kernel is within about 1e-4 of the exact value, in both modes.
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), reference(kind, x, weights, "relu", activation="tanh"),
                               rtol=3e-4, atol=3e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_output_keeps_input_dtype_and_float16_parameters(mode, kind):
    cell = build(kind, param_init_type=ms.float16, compute_dtype=ms.float32)
    assert all(p.dtype == ms.float16 for p in cell.get_parameters())
    x = Tensor(np.random.default_rng(3).standard_normal((2, 3, input_width(kind))), ms.float16)
    out = cell(x)
    assert out.dtype == ms.float16 and out.shape == (2, 3, HIDDEN)


@pytest.mark.parametrize("compute_dtype", [ms.float32, ms.float16])
def test_fresh_adapter_layer_is_the_identity(mode, compute_dtype):
    x = np.random.default_rng(4).standard_normal((2, 5, HIDDEN)).astype(np.float32)
    out = AdapterLayer(HIDDEN, BOTTLENECK, compute_dtype=compute_dtype)(Tensor(x)).asnumpy()
    # The residual stays in the input's dtype, so even float16 compute gives back x exactly.
    assert np.array_equal(out, x)


def test_fresh_adapter_dense_equals_the_dense_it_replaces(mode):
    dense = nn.Dense(IN, HIDDEN, activation="relu")
    adapter = AdapterDense(IN, HIDDEN, weight_init=dense.weight.value(), bias_init=dense.bias.value(),
                           activation="relu", bottleneck_size=BOTTLENECK, compute_dtype=ms.float32)
    x = Tensor(np.random.default_rng(5).standard_normal((2, 5, IN)), ms.float32)
    np.testing.assert_allclose(adapter(x).asnumpy(), dense(x).asnumpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["adapter_dense", "low_rank_dense"])
def test_pretrained_dense_checkpoint_loads_after_swap(kind, tmp_path):
    class Model(nn.Cell):
        def __init__(self, layer):
            super().__init__()
            self.proj = layer

        def construct(self, x):
            return self.proj(x)

    path = str(tmp_path / "base.ckpt")
    ms.save_checkpoint(Model(nn.Dense(IN, HIDDEN)), path)
    model = Model(build(kind))
    not_loaded, unexpected = ms.load_param_into_net(model, ms.load_checkpoint(path))
    assert not unexpected
    assert sorted(not_loaded) == sorted(p.name for p in model.get_parameters() if "mindpet_delta_" in p.name)
    assert np.array_equal(model.proj.weight.asnumpy(), ms.load_checkpoint(path)["proj.weight"].asnumpy())


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_names_follow_the_convention(kind):
    class Block(nn.Cell):
        def __init__(self):
            super().__init__()
            self.layer = build(kind)

        def construct(self, x):
            return self.layer(x)

    branch = "mindpet_delta_adapter" if kind.startswith("adapter") else "mindpet_delta_low_rank_adapter"
    expected = {f"layer.{branch}.{name}" for name in branch_shapes(kind)}
    if kind.endswith("dense"):
        expected |= {"layer.weight", "layer.bias"}
    assert {p.name for p in Block().get_parameters()} == expected


class _Grad(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.grad = ops.GradOperation(get_by_list=True)
        self.params = ms.ParameterTuple(p for p in cell.get_parameters() if "mindpet_delta_" in p.name)

    def construct(self, x):
        return self.grad(self.cell, self.params)(x)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_delta_parameter(mode, kind):
    cell = build(kind, random_weights(np.random.default_rng(6), kind), compute_dtype=ms.float32)
    x = Tensor(np.random.default_rng(7).standard_normal((4, input_width(kind))), ms.float32)
    grads = _Grad(cell)(x)
    assert len(grads) == len(branch_shapes(kind))
    assert all(np.abs(g.asnumpy()).max() > 0 for g in grads)


ADAPTER_MANUAL = dict(
    strategy_matmul_down_sampler=((2, 1), (1, 1)), strategy_bias_down_sampler=((2, 1), (1,)),
    strategy_non_linearity=((2, 1),), strategy_matmul_up_sampler=((2, 1), (1, 1)),
    strategy_bias_up_sampler=((2, 1), (1,)), strategy_residual_add=((2, 1), (2, 1)))
LOW_RANK_MANUAL = dict(
    strategy_matmul_down_sampler_weight=((1, 1), (1, 1)), strategy_matmul_down_sampler_input=((2, 1), (1, 1)),
    strategy_bias_down_sampler=((2, 1), (1,)), strategy_non_linearity=((2, 1),),
    strategy_matmul_up_sampler_weight=((1, 1), (1, 1)), strategy_matmul_up_sampler_input=((2, 1), (1, 1)),
    strategy_bias_up_sampler=((2, 1), (1,)), strategy_residual_add=((2, 1), (2, 1)))
DENSE_MANUAL = dict(strategy_matmul_org=((2, 4), (1, 4)), strategy_bias_org=((2, 1), (1,)),
                    strategy_activation_org=((2, 1),))


def manual_strategies(kind):
    """The strategies of the manual's shard() examples for ``kind``."""
    strategies = dict(ADAPTER_MANUAL if kind.startswith("adapter") else LOW_RANK_MANUAL)
    if kind.endswith("dense"):
        strategies.update(DENSE_MANUAL)
    return strategies


class TestShard:
    @pytest.mark.parametrize("kind", KINDS)
    def test_manual_example_is_accepted_and_changes_no_numbers(self, mode, kind):
        weights = random_weights(np.random.default_rng(8), kind)
        kwargs = dict(activation="relu") if kind.endswith("dense") else {}
        cell = build(kind, weights, compute_dtype=ms.float32, **kwargs)
        x = np.random.default_rng(9).standard_normal((4, input_width(kind))).astype(np.float32)
        assert cell.shard(**manual_strategies(kind)) is cell
        assert cell.residual_add.in_strategy == ((2, 1), (2, 1))
        branch = branch_of(cell)
        assert branch.down_bias_add.in_strategy == ((2, 1), (1,))
        assert branch.non_linearity.primitive.in_strategy == ((2, 1),)
        if kind.startswith("low_rank"):
            assert branch.down_input_matmul.in_strategy == ((2, 1), (1, 1))
            assert branch.up_weight_matmul.in_strategy == ((1, 1), (1, 1))
        else:
            assert branch.up_matmul.in_strategy == ((2, 1), (1, 1))
        if kind.endswith("dense"):
            assert cell.matmul.in_strategy == ((2, 4), (1, 4))
            assert cell.activation.primitive.in_strategy == ((2, 1),)
        expected = reference(kind, x, weights, "gelu", activation="relu" if kwargs else None)
        np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), expected, rtol=1e-5, atol=1e-5)

    def test_residual_add_is_the_only_spelling(self):
        cell = AdapterLayer(HIDDEN, BOTTLENECK)
        cell.shard(strategy_residual_add=((4, 1), (4, 1)))
        assert cell.residual_add.in_strategy == ((4, 1), (4, 1))
        # MindPet 1.0.4 refused the manual's misspelling too, so no code depends on it.
        with pytest.raises(TypeError, match="strategy_residential_add"):
            cell.shard(strategy_residential_add=((2, 1), (2, 1)))

    @pytest.mark.parametrize("kind", ["adapter_layer", "low_rank_dense"])
    @pytest.mark.parametrize("non_linearity", ["gelu", "relu", "tanh", "leakyrelu", "silu", "sigmoid", "softmax"])
    def test_non_linearity_strategy_reaches_every_primitive(self, kind, non_linearity):
        cell = build(kind, non_linearity=non_linearity)
        cell.shard(strategy_non_linearity=((2, 1),))
        activation = branch_of(cell).non_linearity
        primitives = [value for value in vars(activation).values() if isinstance(value, ops.Primitive)]
        # Composite activations (silu, leakyrelu) hold two-input primitives: every tensor input gets the layout,
        # a scalar input (leakyrelu's slope) the empty one.
        assert primitives and all(set(p.in_strategy) - {()} == {(2, 1)} for p in primitives)

    @pytest.mark.parametrize("kind,argument,strategy,expected", [
        ("adapter_layer", "strategy_matmul_down_sampler", ((2, 1),), "2 layout"),
        ("adapter_layer", "strategy_bias_down_sampler", ((2, 1), (1, 1)), "length 1 for input 1"),
        ("adapter_layer", "strategy_non_linearity", [(2, 1)], "tuple of tuples"),
        ("adapter_layer", "strategy_matmul_up_sampler", ((2, 1), (0, 1)), "positive ints"),
        ("adapter_layer", "strategy_bias_up_sampler", ((2, 1, 1), (1,)), "length 2 for input 0"),
        ("adapter_layer", "strategy_residual_add", ((2, 1), (2, 1), (2, 1)), "2 layout"),
        ("adapter_dense", "strategy_matmul_org", ((2, 4),), "2 layout"),
        ("adapter_dense", "strategy_bias_org", ((2, 1), (1, 1)), "length 1 for input 1"),
        ("low_rank_layer", "strategy_matmul_down_sampler_weight", ((1, 1),), "2 layout"),
        ("low_rank_layer", "strategy_matmul_down_sampler_input", ((2,), (1, 1)), "length 2 for input 0"),
        ("low_rank_layer", "strategy_matmul_up_sampler_weight", "((1, 1), (1, 1))", "tuple of tuples"),
        ("low_rank_layer", "strategy_matmul_up_sampler_input", ((2, 1), (1, 1.0)), "positive ints"),
        ("low_rank_dense", "strategy_non_linearity", ((2, 1), (1, 2)), "1 layout"),
    ])
    def test_malformed_strategy_names_the_argument(self, kind, argument, strategy, expected):
        with pytest.raises(ValueError, match=argument) as info:
            build(kind).shard(**{argument: strategy})
        assert expected in str(info.value)

    def test_log_softmax_refused_in_parallel_mode(self):
        ms.set_auto_parallel_context(parallel_mode="semi_auto_parallel")
        try:
            with pytest.raises(ValueError, match="'non_linearity' cannot be LogSoftmax"):
                AdapterLayer(HIDDEN, BOTTLENECK, non_linearity="logsoftmax")
        finally:
            ms.reset_auto_parallel_context()


ERROR_CASES = [
    # (kind, overrides, error, argument)
    ("adapter_layer", dict(hidden_size=8.0), TypeError, "hidden_size"),
    ("adapter_layer", dict(hidden_size=0), ValueError, "hidden_size"),
    ("adapter_layer", dict(bottleneck_size=True), TypeError, "bottleneck_size"),
    ("adapter_layer", dict(bottleneck_size=-4), ValueError, "bottleneck_size"),
    ("adapter_layer", dict(non_linearity=nn.ReLU()), TypeError, "non_linearity"),
    ("adapter_layer", dict(param_init_type=ms.int32), TypeError, "param_init_type"),
    ("adapter_layer", dict(compute_dtype="float16"), TypeError, "compute_dtype"),
    ("adapter_dense", dict(in_channels="6"), TypeError, "in_channels"),
    ("adapter_dense", dict(out_channels=0), ValueError, "out_channels"),
    ("adapter_dense", dict(bottleneck_size=2.5), TypeError, "bottleneck_size"),
    ("adapter_dense", dict(bottleneck_size=0), ValueError, "bottleneck_size"),
    ("adapter_dense", dict(has_bias="yes"), TypeError, "has_bias"),
    ("adapter_dense", dict(activation=7), TypeError, "activation"),
    ("adapter_dense", dict(non_linearity=None), TypeError, "non_linearity"),
    ("adapter_dense", dict(weight_init=[1.0]), TypeError, "weight_init"),
    ("adapter_dense", dict(weight_init="no_such_init"), ValueError, "weight_init"),
    ("adapter_dense", dict(weight_init=Tensor(np.zeros((IN, HIDDEN), np.float32))), ValueError, "weight_init"),
    ("adapter_dense", dict(bias_init=Tensor(np.zeros((HIDDEN, 1), np.float32))), ValueError, "bias_init"),
    ("adapter_dense", dict(compute_dtype=ms.bfloat16), TypeError, "compute_dtype"),
    ("low_rank_layer", dict(hidden_size="8"), TypeError, "hidden_size"),
    ("low_rank_layer", dict(reduction_factor=2.0), TypeError, "reduction_factor"),
    ("low_rank_layer", dict(reduction_factor=0), ValueError, "reduction_factor"),
    ("low_rank_layer", dict(reduction_factor=HIDDEN + 1), ValueError, "reduction_factor"),
    ("low_rank_layer", dict(low_rank_size=None), TypeError, "low_rank_size"),
    ("low_rank_layer", dict(low_rank_size=-1), ValueError, "low_rank_size"),
    ("low_rank_layer", dict(low_rank_w_init=0.1), TypeError, "low_rank_w_init"),
    ("low_rank_layer", dict(low_rank_w_init=Tensor(np.zeros((HIDDEN, 1), np.float32))), TypeError,
     "low_rank_w_init"),
    ("low_rank_layer", dict(low_rank_w_init="no_such_init"), ValueError, "low_rank_w_init"),
    ("low_rank_layer", dict(non_linearity=ops.ReLU()), TypeError, "non_linearity"),
    ("low_rank_layer", dict(param_init_type=ms.float64), TypeError, "param_init_type"),
    ("low_rank_dense", dict(in_channels=-6), ValueError, "in_channels"),
    ("low_rank_dense", dict(out_channels=8.0), TypeError, "out_channels"),
    ("low_rank_dense", dict(reduction_factor=HIDDEN + 1), ValueError, "reduction_factor"),
    ("low_rank_dense", dict(low_rank_size=0), ValueError, "low_rank_size"),
    ("low_rank_dense", dict(has_bias=None), TypeError, "has_bias"),
    ("low_rank_dense", dict(activation=[]), TypeError, "activation"),
    ("low_rank_dense", dict(bias_init=Tensor(np.zeros((IN,), np.float32))), ValueError, "bias_init"),
    ("low_rank_dense", dict(low_rank_w_init=None), TypeError, "low_rank_w_init"),
    ("low_rank_dense", dict(compute_dtype=ms.int8), TypeError, "compute_dtype"),
]

DEFAULT_ARGS = {
    "adapter_layer": (AdapterLayer, dict(hidden_size=HIDDEN, bottleneck_size=BOTTLENECK)),
    "adapter_dense": (AdapterDense, dict(in_channels=IN, out_channels=HIDDEN, bottleneck_size=BOTTLENECK)),
    "low_rank_layer": (LowRankAdapterLayer, dict(hidden_size=HIDDEN, reduction_factor=REDUCTION)),
    "low_rank_dense": (LowRankAdapterDense, dict(in_channels=IN, out_channels=HIDDEN, reduction_factor=REDUCTION)),
}


@pytest.mark.parametrize("kind,overrides,error,argument", ERROR_CASES)
def test_bad_arguments(kind, overrides, error, argument):
    cls, kwargs = DEFAULT_ARGS[kind]
    with pytest.raises(error, match=f"For '{cls.__name__}', the argument '{argument}'") as info:
        cls(**{**kwargs, **overrides})
    assert "but got" in str(info.value)


@pytest.mark.parametrize("kind,argument", [("adapter_layer", "non_linearity"), ("adapter_dense", "activation"),
                                           ("adapter_dense", "non_linearity"), ("low_rank_dense", "non_linearity")])
def test_unknown_activation_is_both_value_and_key_error(kind, argument):
    cls, kwargs = DEFAULT_ARGS[kind]
    for caught in (ValueError, KeyError, ActivationNotFoundError):
        with pytest.raises(caught, match=f"'{argument}' must be one of .* but got 'no_such_act'"):
            cls(**{**kwargs, argument: "no_such_act"})


def test_reduction_factor_bound_names_the_width():
    with pytest.raises(ValueError, match=r"'reduction_factor' must be <= out_channels \(8\), but got 9"):
        LowRankAdapterDense(IN, HIDDEN, reduction_factor=HIDDEN + 1)
    assert LowRankAdapterDense(IN, HIDDEN, reduction_factor=HIDDEN).bottleneck_size == 1


def test_low_rank_initializer_instance_is_accepted():
    from mindspore.common.initializer import Normal
    cell = LowRankAdapterLayer(HIDDEN, REDUCTION, low_rank_w_init=Normal(sigma=0.0))
    assert not np.abs(cell.mindpet_delta_low_rank_adapter.up_weight_right.asnumpy()).any()


@pytest.mark.parametrize("hidden,bottleneck,reduction,low_rank", [(768, 64, 32, 1), (16, 4, 4, 2)])
def test_trainable_counts_match_the_formulas(hidden, bottleneck, reduction, low_rank):
    def delta_count(cell):
        return sum(int(np.prod(p.shape)) for p in cell.get_parameters() if "mindpet_delta_" in p.name)

    # Houlsby: two (hidden x bottleneck) projections and their biases.
    assert delta_count(AdapterLayer(hidden, bottleneck)) == 2 * hidden * bottleneck + bottleneck + hidden
    # Low-rank: four factors of rank r around a bottleneck of hidden // reduction, and the two biases.
    width = hidden // reduction
    expected = 2 * low_rank * (hidden + width) + width + hidden
    assert delta_count(LowRankAdapterLayer(hidden, reduction, low_rank_size=low_rank)) == expected
    assert delta_count(LowRankAdapterDense(hidden, hidden, reduction_factor=reduction,
                                           low_rank_size=low_rank)) == expected
