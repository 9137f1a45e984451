"""Applying methods by config to a network nobody edited: targeting, the dry run, injection, strategies, training."""
import json
import re

import mindspore as ms
import numpy as np
import pytest
from injection_models import DENSE_PATHS, WIDTH, TinyNet, hand_written
from mindspore import Tensor, nn
from mindspore.train import CheckpointConfig, Model

from mindpet import (
    AdapterConfig,
    LoraConfig,
    LowRankAdapterConfig,
    config_from_dict,
    get_delta_model,
    merge_and_unload,
    plan_delta,
    trainable_summary,
)
from mindpet.delta import AdapterDense, LoRADense, LowRankAdapterDense
from mindpet.graph import TrainableParamsCheckPoint, check_shard_strategies, freeze_delta

CONFIGS = {
    "lora": lambda **kw: LoraConfig(lora_rank=4, lora_alpha=8, **kw),
    "adapter": lambda **kw: AdapterConfig(bottleneck_size=4, **kw),
    "low_rank_adapter": lambda **kw: LowRankAdapterConfig(reduction_factor=4, low_rank_size=2, **kw),
}
CELL_TYPES = {"lora": LoRADense, "adapter": AdapterDense, "low_rank_adapter": LowRankAdapterDense}


def _inputs(seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal((2, 5, WIDTH)).astype(np.float32))


def _values(network):
    return {param.name: param.asnumpy().copy() for param in network.get_parameters()}


def _trainable(network):
    return sorted(param.name for param in network.get_parameters() if param.requires_grad)


def _randomize_delta(network, seed=1):
    """Give every delta parameter nonzero values, so the branch changes the output."""
    rng = np.random.default_rng(seed)
    for param in network.get_parameters():
        if "mindpet_delta" in param.name:
            param.set_data(Tensor(0.3 * rng.standard_normal(param.shape).astype(np.float32)))


def _lora_paths(network):
    return sorted(path for path, cell in network.cells_and_names() if isinstance(cell, LoRADense))


class TestTargeting:
    @pytest.mark.parametrize("targets,expected", [
        (["q_proj", "v_proj"], ["layers.0.attn.q_proj", "layers.0.attn.v_proj", "layers.1.attn.q_proj",
                                "layers.1.attn.v_proj"]),
        (["attn.q_proj"], ["layers.0.attn.q_proj", "layers.1.attn.q_proj"]),
        (["layers.1.attn.q_proj"], ["layers.1.attn.q_proj"]),
        (["layers.*.mlp.?"], ["layers.0.mlp.0", "layers.0.mlp.1", "layers.1.mlp.0", "layers.1.mlp.1"]),
        (["layers.[1].attn.*_proj"], ["layers.1.attn.k_proj", "layers.1.attn.o_proj", "layers.1.attn.q_proj",
                                      "layers.1.attn.v_proj"]),
        (r"layers\.0\.attn\.(q|k)_proj", ["layers.0.attn.k_proj", "layers.0.attn.q_proj"]),
        ("all-dense", sorted(DENSE_PATHS)),
    ])
    def test_target_forms_select_exactly(self, targets, expected):
        network = get_delta_model(TinyNet(), LoraConfig(target_modules=targets, lora_rank=2))
        assert _lora_paths(network) == expected
        assert _trainable(network) == sorted(f"{path}.mindpet_delta_lora_{ab}" for path in expected for ab in "ab")

    def test_a_suffix_entry_matches_whole_components_only(self):
        # 'proj' is no component of 'q_proj': nothing matches, and the message names the closest layers.
        with pytest.raises(ValueError, match=r"matches no Dense-like layer.*layers\.0\.attn"):
            get_delta_model(TinyNet(), LoraConfig(target_modules=["proj"]))

    def test_exclude_wins_and_modules_to_save_is_never_targeted_but_trains(self):
        config = LoraConfig(target_modules="all-dense", exclude_modules=["layers.0.*", "mlp.1"],
                            modules_to_save=["head"], lora_rank=2)
        network = get_delta_model(TinyNet(), config)
        expected = ["layers.1.attn.k_proj", "layers.1.attn.o_proj", "layers.1.attn.q_proj", "layers.1.attn.v_proj",
                    "layers.1.mlp.0"]
        assert _lora_paths(network) == expected
        assert _trainable(network) == sorted(["head.bias", "head.weight"] + [
            f"{path}.mindpet_delta_lora_{ab}" for path in expected for ab in "ab"])

    def test_regex_exclude(self):
        network = get_delta_model(TinyNet(), LoraConfig(target_modules=["q_proj", "k_proj"],
                                                        exclude_modules=r".*k_proj"))
        assert _lora_paths(network) == ["layers.0.attn.q_proj", "layers.1.attn.q_proj"]

    def test_rank_and_alpha_patterns(self):
        config = LoraConfig(target_modules=["q_proj", "v_proj"], lora_rank=2, lora_alpha=4,
                            rank_pattern={"layers.1.attn.q_proj": 6}, alpha_pattern={r".*v_proj": 10})
        network = get_delta_model(TinyNet(), config)
        cells = dict(network.cells_and_names())
        assert cells["layers.1.attn.q_proj"].lora_rank == 6 and cells["layers.0.attn.q_proj"].lora_rank == 2
        assert cells["layers.0.attn.v_proj"].lora_alpha == 10 and cells["layers.0.attn.q_proj"].lora_alpha == 4
        assert cells["layers.1.attn.q_proj"].mindpet_delta_lora_a.shape == (6, WIDTH)


class TestInjection:
    @pytest.mark.parametrize("method", sorted(CONFIGS))
    def test_same_parameter_objects_and_a_fresh_cell_changes_nothing(self, method):
        network = TinyNet()
        x = _inputs()
        before_ids = {param.name: id(param) for param in network.get_parameters()}
        before_output = network(x).asnumpy()
        get_delta_model(network, CONFIGS[method](target_modules=["q_proj", "mlp.0"]))
        after = {param.name: id(param) for param in network.get_parameters()}
        assert all(after[name] == param_id for name, param_id in before_ids.items())
        # LoRA's B and the adapters' up-projections start at zero; the low-rank adapter is not the identity at init.
        if method != "low_rank_adapter":
            assert np.array_equal(network(x).asnumpy(), before_output)

    @pytest.mark.parametrize("method", sorted(CONFIGS))
    def test_injected_equals_hand_written(self, mode, method):
        targets = ["layers.0.attn.q_proj", "layers.1.attn.o_proj", "layers.1.mlp.0"]
        injected = get_delta_model(TinyNet(), CONFIGS[method](target_modules=targets))
        _randomize_delta(injected)
        written = hand_written(method, targets)
        assert [param.name for param in injected.get_parameters()] == \
            [param.name for param in written.get_parameters()]
        ms.load_param_into_net(written, {name: ms.Parameter(Tensor(value), name=name)
                                         for name, value in _values(injected).items()}, strict_load=True)
        x = _inputs()
        injected_output, written_output = injected(x).asnumpy(), written(x).asnumpy()
        assert np.allclose(injected_output, written_output, atol=1e-6)
        assert not np.allclose(injected_output, TinyNet()(x).asnumpy())

    def test_checkpoint_saved_before_injection_loads_after(self, tmp_path):
        source = TinyNet()
        path = str(tmp_path / "base.ckpt")
        ms.save_checkpoint(source, path)
        network = get_delta_model(TinyNet(), LoraConfig(target_modules=["q_proj"]))
        not_loaded, unused = ms.load_param_into_net(network, ms.load_checkpoint(path))
        assert unused == []
        assert sorted(not_loaded) == sorted(name for name in _values(network) if "lora" in name)
        for name, value in _values(source).items():
            assert np.array_equal(_values(network)[name], value)

    def test_second_method_on_the_same_cell_is_refused(self):
        network = get_delta_model(TinyNet(), LoraConfig(target_modules=["q_proj"]))
        held = r"already hold a delta method.*'layers\.0\.attn\.q_proj' \(LoRADense, lora\)"
        with pytest.raises(ValueError, match=held):
            get_delta_model(network, AdapterConfig(target_modules=["q_proj"]))
        # Other cells still take a second method, and both deltas train.
        get_delta_model(network, AdapterConfig(target_modules=["v_proj"], bottleneck_size=2))
        trainable = _trainable(network)
        assert any("lora" in name for name in trainable) and any("adapter" in name for name in trainable)

    def test_unsupported_type_is_refused_by_name_and_skipped_by_all_dense(self, caplog):
        with pytest.raises(ValueError, match=r"'layers\.0\.norm' \(LayerNorm\): it is not a Dense-like layer"):
            get_delta_model(TinyNet(), LoraConfig(target_modules=["norm", "q_proj"]))

    def test_unmatched_entry_warns(self, caplog):
        with caplog.at_level("WARNING", logger="mindpet"):
            get_delta_model(TinyNet(), LoraConfig(target_modules=["q_proj", "query"]))
        assert "entry 'query' matches no cell" in caplog.text

    def test_injecting_into_a_compiled_network_warns(self, graph_mode, caplog):
        network = TinyNet()
        network(_inputs())
        with caplog.at_level("WARNING", logger="mindpet"):
            get_delta_model(network, LoraConfig(target_modules=["q_proj"]))
        assert "already compiled in GRAPH mode" in caplog.text

    def test_config_is_recorded_on_the_network(self):
        config = LoraConfig(target_modules=["q_proj"])
        assert get_delta_model(TinyNet(), config).delta_configs == {"lora": config}

    def test_bad_arguments(self):
        with pytest.raises(TypeError, match="'network' must be a mindspore.nn.Cell"):
            get_delta_model("net", LoraConfig(target_modules=["q_proj"]))
        with pytest.raises(TypeError, match="'config' must be a config of one of LoraConfig"):
            get_delta_model(TinyNet(), {"target_modules": ["q_proj"]})


class TestPlan:
    def test_plan_changes_nothing_and_predicts_the_result(self):
        network = TinyNet()
        before = _values(network)
        types_before = [type(cell) for _, cell in network.cells_and_names()]
        trainable_before = _trainable(network)
        config = LoraConfig(target_modules=["q_proj", "mlp.0", "missing"], lora_rank=2, modules_to_save=["head"])
        plan = plan_delta(network, config)
        after = _values(network)
        assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
        assert [type(cell) for _, cell in network.cells_and_names()] == types_before
        assert _trainable(network) == trainable_before
        assert [(cell.path, cell.cell_type, cell.in_channels, cell.out_channels, cell.added_params)
                for cell in plan.matched] == [
            ("layers.0.attn.q_proj", "Dense", 16, 16, 64), ("layers.0.mlp.0", "Dense", 16, 32, 96),
            ("layers.1.attn.q_proj", "Dense", 16, 16, 64), ("layers.1.mlp.0", "Dense", 16, 32, 96)]
        assert plan.unmatched_entries == ("missing",) and plan.modules_to_save == ("head",)
        summary = trainable_summary(get_delta_model(network, config))
        assert (plan.trainable, plan.total) == (summary.trainable, summary.total)
        text = str(plan)
        assert "layers.0.mlp.0" in text and "unmatched target entry: 'missing'" in text
        assert text.splitlines()[-1] == str(summary)

    def test_all_dense_reaches_only_dense_layers_and_a_named_conv_is_refused(self):
        class WithPrefix(nn.Cell):
            def __init__(self):
                super().__init__()
                self.body = TinyNet()
                self.odd = nn.Conv1d(4, 4, 1)

            def construct(self, x):
                return self.body(x)
        plan = plan_delta(WithPrefix(), LoraConfig(target_modules="all-dense"))
        assert len(plan.matched) == len(DENSE_PATHS) and plan.unsupported == ()
        with pytest.raises(ValueError, match=r"'odd' \(Conv1d\): it is not a Dense-like layer"):
            plan_delta(WithPrefix(), LoraConfig(target_modules=["odd", "q_proj"]))

    def test_no_match_names_the_closest_paths(self):
        with pytest.raises(ValueError, match=r"\['q_prj'\] matches no Dense-like layer.*'layers\.0\.attn\.q_proj'"):
            plan_delta(TinyNet(), LoraConfig(target_modules=["q_prj"]))


class TestConfigs:
    @pytest.mark.parametrize("method", sorted(CONFIGS))
    def test_round_trip_through_json(self, method):
        config = CONFIGS[method](target_modules=["q_proj"], exclude_modules=r".*1\..*", modules_to_save=["head"])
        data = json.loads(json.dumps(config.to_dict()))
        assert data["method"] == method
        assert config_from_dict(data) == config and type(config).from_dict(data) == config

    def test_unknown_keys_warn_and_are_skipped(self, caplog):
        data = {**LoraConfig(target_modules=["q_proj"]).to_dict(), "use_future_trick": True}
        with caplog.at_level("WARNING", logger="mindpet"):
            assert LoraConfig.from_dict(data) == LoraConfig(target_modules=["q_proj"])
        assert "use_future_trick" in caplog.text

    @pytest.mark.parametrize("make,error,argument", [
        (lambda: LoraConfig(), TypeError, "target_modules"),
        (lambda: LoraConfig(target_modules=[]), ValueError, "target_modules"),
        (lambda: LoraConfig(target_modules="(unclosed"), ValueError, "target_modules"),
        (lambda: LoraConfig(target_modules=["q"], exclude_modules=5), TypeError, "exclude_modules"),
        (lambda: LoraConfig(target_modules=["q"], modules_to_save="head"), TypeError, "modules_to_save"),
        (lambda: LoraConfig(target_modules=["q"], lora_rank=0), ValueError, "lora_rank"),
        (lambda: LoraConfig(target_modules=["q"], lora_rank=2.0), TypeError, "lora_rank"),
        (lambda: LoraConfig(target_modules=["q"], lora_alpha=0), ValueError, "lora_alpha"),
        (lambda: LoraConfig(target_modules=["q"], lora_dropout=1.0), ValueError, "lora_dropout"),
        (lambda: LoraConfig(target_modules=["q"], rank_pattern={"q": 0}), ValueError, "rank_pattern"),
        (lambda: LoraConfig(target_modules=["q"], rank_pattern=[("q", 2)]), TypeError, "rank_pattern"),
        (lambda: LoraConfig(target_modules=["q"], alpha_pattern={"(": 2}), ValueError, "alpha_pattern"),
        (lambda: AdapterConfig(target_modules=["q"], bottleneck_size=-1), ValueError, "bottleneck_size"),
        (lambda: AdapterConfig(target_modules=["q"], non_linearity="nope"), ValueError, "non_linearity"),
        (lambda: LowRankAdapterConfig(target_modules=["q"], reduction_factor=0), ValueError, "reduction_factor"),
        (lambda: LowRankAdapterConfig(target_modules=["q"], low_rank_size=True), TypeError, "low_rank_size"),
        (lambda: config_from_dict({"method": "nope"}), ValueError, "data['method']"),
        (lambda: config_from_dict({"method": "bitfit"}), ValueError, "data['method']"),
        (lambda: LoraConfig.from_dict({"method": "adapter", "target_modules": ["q"]}), ValueError, "data['method']"),
    ])
    def test_errors_name_the_argument(self, make, error, argument):
        with pytest.raises(error, match=re.escape(f"the argument '{argument}")):
            make()

    def test_a_config_changed_after_construction_is_validated_again(self):
        config = LoraConfig(target_modules=["q_proj"])
        config.lora_rank = -2
        with pytest.raises(ValueError, match="'lora_rank'"):
            get_delta_model(TinyNet(), config)


class TestStrategies:
    # The manual's LoRA example splits the batch 2-way and the output 4-way: it implies 8 devices.
    DP, MP = 2, 4

    def _sharded_net(self):
        network = TinyNet()
        for path, cell in network.cells_and_names():
            if path.endswith("q_proj") or path.endswith("o_proj"):
                cell.matmul.shard(((self.DP, 1), (self.MP, 1)))
                cell.bias_add.shard(((self.DP, self.MP), (self.MP,)))
        return network

    @pytest.mark.parametrize("method", sorted(CONFIGS))
    def test_derived_strategies_fit_the_manual_device_count(self, method):
        network = get_delta_model(self._sharded_net(), CONFIGS[method](target_modules=["q_proj", "o_proj"]))
        report = check_shard_strategies(network, device_num=8)
        assert report.min_device_num == 8
        assert set(report.cells) == {f"layers.{i}.attn.{name}" for i in range(2) for name in ("q_proj", "o_proj")}
        with pytest.raises(ValueError, match="fit a device count of 4"):
            check_shard_strategies(network, device_num=4)

    def test_lora_branch_follows_the_host_split(self):
        network = get_delta_model(self._sharded_net(), LoraConfig(target_modules=["layers.0.attn.o_proj"]))
        cell = dict(network.cells_and_names())["layers.0.attn.o_proj"]
        assert cell.matmul.in_strategy == ((2, 1), (4, 1))
        assert cell.lora_b_matmul.in_strategy == ((2, 1), (4, 1))
        assert cell.lora_add.in_strategy == ((2, 4), (2, 4))
        # o_proj has a ReLU: its strategy follows the Dense output.
        assert cell.activation.relu.in_strategy == ((2, 4),)

    def test_unsharded_hosts_get_no_strategy(self):
        network = get_delta_model(TinyNet(), LoraConfig(target_modules=["q_proj"]))
        assert all(strategies == {} for strategies in check_shard_strategies(network).cells.values())


def test_merge_and_unload_after_injection(mode):
    network = get_delta_model(TinyNet(), LoraConfig(target_modules="all-dense", exclude_modules=["head"]))
    _randomize_delta(network)
    x = _inputs()
    before = network(x).asnumpy()
    names = [param.name for param in network.get_parameters() if "lora" not in param.name]
    merged = merge_and_unload(network)
    assert not any(isinstance(cell, LoRADense) for _, cell in merged.cells_and_names())
    assert [param.name for param in merged.get_parameters()] == names
    assert np.allclose(merged(x).asnumpy(), before, atol=1e-5)


def test_merge_and_unload_refuses_adapters():
    network = get_delta_model(TinyNet(), AdapterConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"cannot be merged.*layers\.0\.attn\.q_proj \(AdapterDense\)"):
        merge_and_unload(network)
    assert any(isinstance(cell, AdapterDense) for _, cell in network.cells_and_names())


def test_injected_network_trains_with_model_train(graph_mode, tmp_path):
    network = get_delta_model(TinyNet(), LoraConfig(target_modules="all-dense", exclude_modules=["head"],
                                                    modules_to_save=["head"], lora_rank=4, lora_alpha=8))
    frozen = {name: value for name, value in _values(network).items()
              if name not in set(_trainable(network))}
    rng = np.random.default_rng(3)
    features = rng.standard_normal((64, 5, WIDTH)).astype(np.float32)
    labels = (features[:, :, 0].mean(axis=1) > 0).astype(np.int32)
    dataset = ms.dataset.NumpySlicesDataset({"x": features, "y": labels}, shuffle=False).batch(16)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    model = Model(network, loss_fn, nn.Adam(network.trainable_params(), learning_rate=0.02))

    def mean_loss():
        return float(np.mean([loss_fn(network(Tensor(features[i:i + 16])), Tensor(labels[i:i + 16])).asnumpy()
                              for i in range(0, 64, 16)]))
    start = mean_loss()
    checkpoint = TrainableParamsCheckPoint(prefix="delta", directory=str(tmp_path),
                                           config=CheckpointConfig(save_checkpoint_steps=4))
    model.train(8, dataset, callbacks=[checkpoint], dataset_sink_mode=False)
    assert mean_loss() < 0.5 * start
    after = _values(network)
    assert all(np.array_equal(after[name], value) for name, value in frozen.items())
    saved = ms.load_checkpoint(checkpoint.latest_ckpt_file_name)
    assert sorted(name for name in saved if name not in ("epoch_num", "step_num")) == _trainable(network)


def test_freeze_delta_modes_come_from_the_registry():
    network = get_delta_model(TinyNet(), LowRankAdapterConfig(target_modules=["q_proj"], reduction_factor=4))
    assert all("mindpet_delta_low_rank_adapter" in name for name in freeze_delta(network, "low_rank_adapter"))
    with pytest.raises(ValueError, match="one of .*'adapter'.*'bitfit'.*'prefixtuning'"):
        freeze_delta(network, "ia4")
