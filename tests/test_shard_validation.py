"""Up-front validation of shard() strategies: the manual's examples pass on the device count they imply, and
malformed or inconsistent strategies are refused with the argument and the offending number named.

Semi-auto parallel cannot run on CPU, but its context can be set without initialising communication, so the
"validate at shard() time once the device count is known" path is exercised here by setting
``parallel_mode='semi_auto_parallel'`` and ``device_num``; no graph is compiled under it.
"""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from mindpet.delta import (AdapterDense, AdapterLayer, LoRADense, LowRankAdapterDense, LowRankAdapterLayer,
                           PrefixConcat, PrefixEncoder, PrefixLayer)
from mindpet.graph import check_shard_strategies
from mindpet.parallel.context import configured_device_num


@pytest.fixture(autouse=True)
def _reset_parallel_context():
    ms.reset_auto_parallel_context()
    yield
    ms.reset_auto_parallel_context()


def _semi_auto(device_num, **extra):
    ms.set_auto_parallel_context(parallel_mode="semi_auto_parallel", device_num=device_num, **extra)


# The MindPet manual's shard() examples, verbatim, on the cells they are written for (in_channels 1*28*28,
# out_channels 512). Its Dense examples pass strategy_activation_org, so those cells get an activation.
LORA_MANUAL = dict(
    strategy_org_dense_matmul=((2, 1), (4, 1)), strategy_org_bias_add=((2, 4), (4,)),
    strategy_lora_dropout=((2, 1),), strategy_lora_a_matmul=((2, 1), (1, 1)),
    strategy_lora_b_matmul=((2, 1), (4, 1)), strategy_lora_mul=((2, 4), ()),
    strategy_lora_add=((2, 4), (2, 4)), strategy_activation=((2, 4), (2, 4)))
ADAPTER_LAYER_MANUAL = dict(
    strategy_matmul_down_sampler=((2, 1), (1, 1)), strategy_bias_down_sampler=((2, 1), (1,)),
    strategy_non_linearity=((2, 1),), strategy_matmul_up_sampler=((2, 1), (1, 1)),
    strategy_bias_up_sampler=((2, 1), (1,)), strategy_residual_add=((2, 1), (2, 1)))
DENSE_MANUAL = dict(strategy_matmul_org=((2, 4), (1, 4)), strategy_bias_org=((2, 1), (1,)),
                    strategy_activation_org=((2, 1),))
LOW_RANK_LAYER_MANUAL = dict(
    strategy_matmul_down_sampler_weight=((1, 1), (1, 1)), strategy_matmul_down_sampler_input=((2, 1), (1, 1)),
    strategy_bias_down_sampler=((2, 1), (1,)), strategy_non_linearity=((2, 1),),
    strategy_matmul_up_sampler_weight=((1, 1), (1, 1)), strategy_matmul_up_sampler_input=((2, 1), (1, 1)),
    strategy_bias_up_sampler=((2, 1), (1,)), strategy_residual_add=((2, 1), (2, 1)))

# (cell factory, strategies, devices they imply: the largest product of one operator's splits)
MANUAL_EXAMPLES = {
    "LoRADense": (lambda: LoRADense(784, 512, lora_rank=8, lora_alpha=16, activation="relu"), LORA_MANUAL, 8),
    "AdapterDense": (lambda: AdapterDense(784, 512, activation="relu", bottleneck_size=64),
                     {**DENSE_MANUAL, **ADAPTER_LAYER_MANUAL}, 8),
    "AdapterLayer": (lambda: AdapterLayer(hidden_size=512, bottleneck_size=64), ADAPTER_LAYER_MANUAL, 2),
    "LowRankAdapterDense": (lambda: LowRankAdapterDense(784, 512, activation="relu", reduction_factor=8),
                            {**DENSE_MANUAL, **LOW_RANK_LAYER_MANUAL}, 8),
    "LowRankAdapterLayer": (lambda: LowRankAdapterLayer(hidden_size=512, reduction_factor=8, low_rank_size=1),
                            LOW_RANK_LAYER_MANUAL, 2),
}


@pytest.mark.parametrize("name", sorted(MANUAL_EXAMPLES))
def test_manual_example_fits_the_device_count_it_implies(name):
    make, strategies, devices = MANUAL_EXAMPLES[name]
    cell = make()
    assert cell.shard(**strategies) is cell
    report = check_shard_strategies(cell, device_num=devices)
    assert report.cells == {"": strategies}
    assert (report.min_device_num, report.device_num) == (devices, devices)
    # More devices repeat the computation; fewer cannot hold the splits.
    check_shard_strategies(cell, device_num=2 * devices)
    with pytest.raises(ValueError, match=f"must fit a device count of {devices // 2}"):
        check_shard_strategies(cell, device_num=devices // 2)


@pytest.mark.parametrize("name", sorted(MANUAL_EXAMPLES))
def test_manual_example_is_checked_at_shard_time_once_the_context_gives_the_device_count(name):
    make, strategies, devices = MANUAL_EXAMPLES[name]
    _semi_auto(devices)
    make().shard(**strategies)
    _semi_auto(devices // 2)
    cell = make()
    with pytest.raises(ValueError, match=f"must fit a device count of {devices // 2}"):
        cell.shard(**strategies)
    # A refused call applies nothing and keeps nothing.
    assert check_shard_strategies(cell, device_num=devices).cells == {"": {}}
    primitive = cell.matmul if name.endswith("Dense") else cell.residual_add
    assert not hasattr(primitive, "in_strategy")


@pytest.mark.parametrize("make, data_parallel, model_parallel", [
    # The manual gives no shard() example for the prefix cells; these use its PrefixLayer sizes (20 heads of 64,
    # batch 2, prefix_token_num 10) and ChatGLM2-like P-Tuning v2 sizes.
    (lambda: PrefixLayer(prefix_token_num=10, batch_size=2, num_heads=20, hidden_dim=1280, embed_dim=64), 2, 4),
    (lambda: PrefixEncoder(pre_seq_len=8, num_layers=2, num_heads=2, kv_channels=16, prefix_projection=True,
                           projection_dim=64), 4, 2),
    (lambda: PrefixConcat(), 2, 4),
])
def test_prefix_cells_need_data_parallel_times_model_parallel_devices(make, data_parallel, model_parallel):
    cell = make().shard(data_parallel=data_parallel, model_parallel=model_parallel)
    report = check_shard_strategies(cell, device_num=8)
    assert report.cells == {"": {"data_parallel": data_parallel, "model_parallel": model_parallel}}
    assert report.min_device_num == 8
    with pytest.raises(ValueError, match=r"'data_parallel' and 'model_parallel' must multiply to a divisor of the "
                                         r"device count 4, but got \d x \d = 8"):
        check_shard_strategies(cell, device_num=4)
    _semi_auto(4)
    with pytest.raises(ValueError, match="device count 4"):
        make().shard(data_parallel=data_parallel, model_parallel=model_parallel)


def _lora(**kwargs):
    return LoRADense(16, 8, lora_rank=4, lora_alpha=8, **kwargs)


# (cell factory, shard() keywords, the argument the message must name, numbers the message must show)
MALFORMED = {
    "layout count": (_lora, dict(strategy_org_dense_matmul=((2, 1),)),
                     "strategy_org_dense_matmul", ["2 layout(s)"]),
    "layout length": (_lora, dict(strategy_lora_mul=((2, 4), (1,))), "strategy_lora_mul", ["length 0 for input 1"]),
    "split of out_channels": (lambda: LoRADense(16, 6, lora_rank=4, lora_alpha=8),
                              dict(strategy_org_dense_matmul=((2, 1), (4, 1))), "strategy_org_dense_matmul",
                              ["out_channels (6)", "4 at input 1, axis 0"]),
    "split of in_channels": (_lora, dict(strategy_org_dense_matmul=((1, 3), (1, 3))), "strategy_org_dense_matmul",
                             ["in_channels (16)", "3 at input 0, axis 1"]),
    "split of lora_rank": (_lora, dict(strategy_lora_a_matmul=((2, 1), (8, 1))), "strategy_lora_a_matmul",
                           ["lora_rank (4)", "8 at input 1, axis 0"]),
    "contracted axis": (_lora, dict(strategy_org_dense_matmul=((2, 2), (4, 1))), "strategy_org_dense_matmul",
                        ["in_channels alike", "2 at input 0, axis 1 and 1 at input 1, axis 1"]),
    "bias channel": (_lora, dict(strategy_org_bias_add=((2, 4), (2,))), "strategy_org_bias_add",
                     ["out_channels alike", "4 at input 0, axis 1 and 2 at input 1, axis 0"]),
    "add inputs": (_lora, dict(strategy_lora_add=((2, 4), (4, 2))), "strategy_lora_add",
                   ["the flattened batch alike", "2 at input 0, axis 0 and 4 at input 1, axis 0"]),
    "lora_b out split": (_lora, dict(strategy_org_dense_matmul=((2, 1), (4, 1)),
                                     strategy_lora_b_matmul=((2, 1), (2, 1))), "strategy_lora_b_matmul",
                         ["out_channels 4-way, as 'strategy_org_dense_matmul' does", "2 at input 1, axis 0"]),
    "branch batch split": (_lora, dict(strategy_org_dense_matmul=((2, 1), (1, 1)), strategy_lora_dropout=((4, 1),)),
                           "strategy_lora_dropout", ["the flattened batch 2-way", "4 at input 0, axis 0"]),
    "lora_a output layout": (_lora, dict(strategy_lora_a_matmul=((2, 1), (2, 1)),
                                         strategy_lora_b_matmul=((2, 1), (1, 1))), "strategy_lora_b_matmul",
                             ["the output of 'strategy_lora_a_matmul'", "(2, 2)", "laid out as (2, 1)"]),
    "split of bottleneck_size": (lambda: AdapterLayer(16, bottleneck_size=6),
                                 dict(strategy_matmul_down_sampler=((2, 1), (4, 1))), "strategy_matmul_down_sampler",
                                 ["bottleneck_size (6)", "4 at input 1, axis 0"]),
    "residual vs branch": (lambda: AdapterLayer(16, bottleneck_size=4),
                           dict(strategy_bias_up_sampler=((2, 1), (1,)), strategy_residual_add=((2, 2), (2, 2))),
                           "strategy_residual_add", ["hidden_size 1-way", "2 at input 0, axis 1"]),
    "adapter input vs Dense output": (lambda: AdapterDense(16, 8, bottleneck_size=4),
                                      dict(strategy_matmul_org=((2, 4), (1, 4)),
                                           strategy_matmul_down_sampler=((2, 4), (1, 4))),
                                      "strategy_matmul_down_sampler", ["out_channels 1-way", "4 at input 0, axis 1"]),
    "split of low_rank_size": (lambda: LowRankAdapterLayer(16, 4, low_rank_size=3),
                               dict(strategy_matmul_down_sampler_weight=((1, 2), (2, 1))),
                               "strategy_matmul_down_sampler_weight", ["low_rank_size (3)", "2 at input 0, axis 1"]),
    "split of the bottleneck width": (lambda: LowRankAdapterLayer(16, 4),
                                      dict(strategy_matmul_down_sampler_input=((1, 1), (1, 8))),
                                      "strategy_matmul_down_sampler_input",
                                      ["the bottleneck width (4)", "8 at input 1, axis 1"]),
    "formed weight layout": (lambda: LowRankAdapterLayer(16, 4),
                             dict(strategy_matmul_up_sampler_weight=((2, 1), (1, 1)),
                                  strategy_matmul_up_sampler_input=((2, 1), (1, 1))),
                             "strategy_matmul_up_sampler_input",
                             ["the output of 'strategy_matmul_up_sampler_weight'", "(2, 1)", "laid out as (1, 1)"]),
    "prefix batch_size": (lambda: PrefixLayer(prefix_token_num=8, batch_size=2, num_heads=4, hidden_dim=16,
                                              embed_dim=8, mid_dim=8), dict(data_parallel=4),
                          "data_parallel", ["a divisor of batch_size (2)", "got 4"]),
    "prefix heads": (lambda: PrefixEncoder(pre_seq_len=4, num_layers=1, num_heads=6, kv_channels=4),
                     dict(model_parallel=4), "model_parallel", ["a divisor of num_heads (6)", "got 4"]),
    "prefix MLP width": (lambda: PrefixEncoder(pre_seq_len=4, num_layers=1, num_heads=4, kv_channels=4,
                                               prefix_projection=True, projection_dim=6),
                         dict(model_parallel=4), "model_parallel", ["a divisor of the MLP hidden size (6)", "got 4"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_or_inconsistent_strategy_is_refused_naming_argument_and_number(case):
    make, strategies, argument, shown = MALFORMED[case]
    with pytest.raises(ValueError) as info:
        make().shard(**strategies)
    message = str(info.value)
    assert f"the argument '{argument}'" in message
    for text in shown:
        assert text in message


def test_a_later_call_is_checked_against_the_strategies_already_set():
    cell = _lora().shard(strategy_org_dense_matmul=((2, 1), (4, 1)))
    with pytest.raises(ValueError, match="'strategy_lora_b_matmul' must split out_channels 4-way"):
        cell.shard(strategy_lora_b_matmul=((2, 1), (2, 1)))
    assert not hasattr(cell.lora_b_matmul, "in_strategy")
    cell.shard(strategy_lora_b_matmul=((2, 1), (4, 1)))
    assert check_shard_strategies(cell).cells[""] == {"strategy_org_dense_matmul": ((2, 1), (4, 1)),
                                                      "strategy_lora_b_matmul": ((2, 1), (4, 1))}


class _Block(nn.Cell):
    """A toy network: a LoRA projection, an adapter after it, a prefix cell and a plain Dense."""

    def __init__(self):
        super().__init__()
        self.layers = nn.CellList([LoRADense(16, 8, lora_rank=4, lora_alpha=8), AdapterLayer(8, bottleneck_size=4)])
        self.prefix = PrefixEncoder(pre_seq_len=4, num_layers=1, num_heads=4, kv_channels=4)
        self.head = nn.Dense(8, 2)

    def construct(self, x):
        return self.head(self.layers[1](self.layers[0](x)))


def test_network_check_lists_every_broken_rule_with_the_cell_path():
    network = _Block()
    network.layers[0].shard(strategy_org_dense_matmul=((2, 1), (4, 1)))
    network.prefix.shard(data_parallel=2, model_parallel=4)
    report = check_shard_strategies(network, device_num=8)
    assert report.cells == {"layers.0": {"strategy_org_dense_matmul": ((2, 1), (4, 1))}, "layers.1": {},
                            "prefix": {"data_parallel": 2, "model_parallel": 4}}
    assert report.min_device_num == 8
    with pytest.raises(ValueError) as info:
        check_shard_strategies(network, device_num=4)
    message = str(info.value)
    assert message.startswith("check_shard_strategies found 2 broken rule(s) on 4 device(s):")
    assert "- cell 'layers.0' (LoRADense): For 'LoRADense', the argument 'strategy_org_dense_matmul'" in message
    assert "- cell 'prefix' (PrefixEncoder): For 'PrefixEncoder', the arguments 'data_parallel' and" in message


def test_network_check_takes_the_device_count_from_the_context_once_it_is_known():
    network = _Block()
    network.layers[0].shard(**{key: LORA_MANUAL[key] for key in ("strategy_org_dense_matmul",
                                                                 "strategy_lora_b_matmul")})
    assert check_shard_strategies(network).device_num is None
    _semi_auto(4)
    with pytest.raises(ValueError, match="'layers.0'.*must fit a device count of 4"):
        check_shard_strategies(network)
    _semi_auto(16, pipeline_stages=2)
    assert check_shard_strategies(network).device_num == 8


def test_configured_device_num_needs_a_strategy_mode_and_a_known_count():
    assert configured_device_num() is None
    ms.set_auto_parallel_context(device_num=8)
    assert configured_device_num() is None  # stand-alone mode ignores strategies
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(parallel_mode="semi_auto_parallel")
    assert configured_device_num() is None  # no device_num and no communication on this machine
    _semi_auto(8)
    assert configured_device_num() == 8


@pytest.mark.parametrize("network, device_num, error, argument", [
    ("not a cell", None, TypeError, "network"),
    (None, 0, ValueError, "device_num"),
    (None, 8.0, TypeError, "device_num"),
])
def test_network_check_arguments(network, device_num, error, argument):
    with pytest.raises(error, match=f"For 'check_shard_strategies', the argument '{argument}'"):
        check_shard_strategies(_Block() if network is None else network, device_num=device_num)


@pytest.mark.parametrize("make,argument", [
    (lambda: _lora(has_bias=False), "strategy_org_bias_add"),
    (lambda: AdapterDense(16, 8, bottleneck_size=4), "strategy_activation_org"),
    (lambda: LoRADense(16, 8, lora_rank=4, lora_alpha=8), "strategy_activation"),
])
def test_strategy_for_an_operator_the_cell_lacks_is_ignored_with_a_warning(make, argument, caplog):
    # The manual's own examples pass such strategies; MindPet 1.0.4 ignored them, so code written for it must run.
    cell = make()
    with caplog.at_level("WARNING", logger="mindpet"):
        assert cell.shard(**{argument: ((2, 4), (4,)) if "bias" in argument else ((2, 1),)}) is cell
    assert f"'{argument}' is ignored" in caplog.text
    assert argument not in check_shard_strategies(cell).cells[""]


def test_numpy_integers_in_strategies_become_python_ints():
    # Primitive.shard refuses NumPy integers with an internal TypeError; strategies computed with NumPy are common.
    cell = _lora().shard(strategy_org_dense_matmul=((np.int64(2), 1), (np.int32(4), 1)))
    assert cell.matmul.in_strategy == ((2, 1), (4, 1))
    assert all(type(split) is int for layout in cell.matmul.in_strategy for split in layout)
    encoder = PrefixEncoder(pre_seq_len=4, num_layers=1, num_heads=4, kv_channels=4)
    assert encoder.shard(data_parallel=np.int64(2), model_parallel=np.int64(2)) is encoder
    assert check_shard_strategies(encoder, device_num=4).min_device_num == 4
    with pytest.raises(ValueError, match="'strategy_org_dense_matmul' must be a tuple of tuples of positive ints"):
        _lora().shard(strategy_org_dense_matmul=((np.float32(2), 1), (4, 1)))
