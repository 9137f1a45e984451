"""Tests for mindpet.freeze: freeze_modules, freeze_delta and freeze_from_config."""
import json
import logging
import sys
import time

import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn

from mindpet.freeze import freeze_delta, freeze_from_config, freeze_modules

HIDDEN = 8


def _small_param(shape, name):
    return Parameter(Tensor(np.random.normal(0.0, 0.1, shape).astype(np.float32)), name=name)


class DeltaParams(nn.Cell):
    """Stands in for the delta cells: one or two parameters per method, named per convention."""

    def __init__(self):
        super().__init__()
        self.mindpet_delta_lora_a = _small_param((HIDDEN, 2), "mindpet_delta_lora_a")
        self.mindpet_delta_lora_b = _small_param((2, HIDDEN), "mindpet_delta_lora_b")
        self.mindpet_delta_adapter_down_weight = _small_param((HIDDEN, HIDDEN), "mindpet_delta_adapter_down_weight")
        self.mindpet_delta_low_rank_adapter_weight = _small_param((HIDDEN, HIDDEN),
                                                                  "mindpet_delta_low_rank_adapter_weight")
        self.mindpet_delta_prefix_key = _small_param((HIDDEN,), "mindpet_delta_prefix_key")
        self.mindpet_delta_ptuning2_prompt = _small_param((HIDDEN,), "mindpet_delta_ptuning2_prompt")
        self.matmul = ms.ops.MatMul()

    def construct(self, hidden):
        # Every parameter reaches the output, so each one gets a nonzero gradient when trainable.
        low_rank = self.matmul(self.matmul(hidden, self.mindpet_delta_lora_a), self.mindpet_delta_lora_b)
        adapter = self.matmul(hidden, self.mindpet_delta_adapter_down_weight)
        low_rank_adapter = self.matmul(hidden, self.mindpet_delta_low_rank_adapter_weight)
        return (hidden + low_rank + adapter + low_rank_adapter + self.mindpet_delta_prefix_key
                + self.mindpet_delta_ptuning2_prompt)


class Block(nn.Cell):
    def __init__(self):
        super().__init__()
        self.query = nn.Dense(HIDDEN, HIDDEN)
        self.delta = DeltaParams()

    def construct(self, hidden):
        return self.delta(self.query(hidden))


class TinyNet(nn.Cell):
    def __init__(self):
        super().__init__()
        self.embed = nn.Dense(4, HIDDEN, has_bias=False)
        self.encoder = nn.CellList([Block()])
        self.head = nn.Dense(HIDDEN, 2)

    def construct(self, features):
        hidden = self.embed(features)
        for block in self.encoder:
            hidden = block(hidden)
        return self.head(hidden)


DELTA = "encoder.0.delta."
BASE_PARAMS = ["embed.weight", "encoder.0.query.weight", "encoder.0.query.bias", "head.weight", "head.bias"]
MODE_PARAMS = {
    "lora": [DELTA + "mindpet_delta_lora_a", DELTA + "mindpet_delta_lora_b"],
    "adapter": [DELTA + "mindpet_delta_adapter_down_weight"],
    "low_rank_adapter": [DELTA + "mindpet_delta_low_rank_adapter_weight"],
    "prefix": [DELTA + "mindpet_delta_prefix_key"],
    "ptuning2": [DELTA + "mindpet_delta_ptuning2_prompt"],
    "bitfit": ["encoder.0.query.bias", "head.bias"],
}
ALL_PARAMS = sorted(BASE_PARAMS + [name for mode, names in MODE_PARAMS.items() if mode != "bitfit" for name in names])
HEAD_PARAMS = ["head.bias", "head.weight"]


def _trainable(net):
    return sorted(param.name for param in net.get_parameters() if param.requires_grad)


def _state(net):
    return {param.name: param.requires_grad for param in net.get_parameters()}


def _plain_net():
    return nn.SequentialCell([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 2)])


def test_tiny_net_has_the_expected_parameter_names():
    assert sorted(_state(TinyNet())) == ALL_PARAMS


@pytest.mark.parametrize("mode", sorted(MODE_PARAMS))
def test_freeze_delta_trains_exactly_the_mode_params(mode):
    net = TinyNet()
    trainable = freeze_delta(net, mode)
    assert trainable == sorted(MODE_PARAMS[mode])
    assert _trainable(net) == trainable


def test_adapter_and_low_rank_adapter_do_not_select_each_other():
    net = TinyNet()
    assert freeze_delta(net, "adapter") == [DELTA + "mindpet_delta_adapter_down_weight"]
    assert freeze_delta(net, "low_rank_adapter") == [DELTA + "mindpet_delta_low_rank_adapter_weight"]


def test_freeze_delta_refreezes_params_of_an_earlier_mode():
    net = TinyNet()
    freeze_delta(net, "lora")
    assert freeze_delta(net, "prefix") == MODE_PARAMS["prefix"]


@pytest.mark.parametrize("mode, canonical", [
    ("LoRA", "lora"), ("BITFIT", "bitfit"), ("Low_Rank_Adapter", "low_rank_adapter"),
    ("prefixtuning", "prefix"), ("PrefixTuning", "prefix"),
])
def test_freeze_delta_mode_is_case_insensitive_and_accepts_the_prefixtuning_alias(mode, canonical):
    assert freeze_delta(TinyNet(), mode) == sorted(MODE_PARAMS[canonical])


def test_freeze_delta_exclude_keeps_the_head_trainable():
    trainable = freeze_delta(TinyNet(), "lora", exclude=["*head*"])
    assert trainable == sorted(MODE_PARAMS["lora"] + HEAD_PARAMS)


def test_freeze_delta_include_freezes_matching_delta_params():
    trainable = freeze_delta(TinyNet(), "lora", include=["*lora_b"])
    assert trainable == [DELTA + "mindpet_delta_lora_a"]


def test_freeze_delta_include_and_exclude_together():
    # head.weight is in both lists, so it keeps the state the mode gave it (frozen); head.bias is only excluded.
    trainable = freeze_delta(TinyNet(), "bitfit", include=["encoder.*", "head.weight"], exclude=["head.*"])
    assert trainable == HEAD_PARAMS[:1]


def test_freeze_delta_logs_the_trainable_share(caplog):
    with caplog.at_level(logging.INFO, logger="mindpet"):
        freeze_delta(TinyNet(), "lora")
    lines = [record.getMessage() for record in caplog.records if record.name == "mindpet"]
    total = 4 * 8 + (64 + 8) + 2 * 16 + 64 + 64 + 8 + 8 + (16 + 2)
    assert lines == [f"freeze_delta(mode='lora'): 2 of 11 parameters trainable, 32 of {total} elements "
                     f"({100 * 32 / total:.4f}%)."]


def test_freeze_modules_include_only_freezes_and_leaves_the_rest():
    net = TinyNet()
    trainable = freeze_modules(net, include=["encoder.*"])
    assert trainable == sorted(["embed.weight"] + HEAD_PARAMS)


def test_freeze_modules_exclude_only_unfreezes_and_leaves_the_rest():
    net = TinyNet()
    for param in net.get_parameters():
        param.requires_grad = False
    assert freeze_modules(net, exclude=["*.bias"]) == sorted(["encoder.0.query.bias", "head.bias"])


def test_freeze_modules_name_in_both_or_neither_keeps_its_state():
    net = TinyNet()
    net.head.bias.requires_grad = False
    net.encoder[0].query.weight.requires_grad = False
    freeze_modules(net, include=["head.*", "embed.*"], exclude=["head.*", "encoder.0.delta.*"])
    state = _state(net)
    # head.* is in both lists and encoder.0.query.* in neither: all four keep the state they had.
    assert [state[name] for name in ("head.weight", "head.bias")] == [True, False]
    assert [state[name] for name in ("encoder.0.query.weight", "encoder.0.query.bias")] == [False, True]
    assert state["embed.weight"] is False


def test_freeze_modules_patterns_are_case_sensitive():
    assert freeze_modules(TinyNet(), include=["HEAD.*"]) == ALL_PARAMS


@pytest.mark.parametrize("call, error, pattern", [
    (lambda net: freeze_delta(net, "foo"), ValueError, r"'mode' must be one of \['adalora', 'adapter', 'bitfit'.*'foo'"),
    (lambda net: freeze_delta(net, 3), TypeError, r"'mode' must be a str, but got 3"),
    (lambda net: freeze_delta(net, "lora", include="*head*"), TypeError, r"'include' must be a list of str"),
    (lambda net: freeze_delta(net, "lora", exclude=[]), ValueError, r"'exclude' must be a non-empty list"),
    (lambda net: freeze_delta(net, "lora", exclude=["*", 1]), TypeError, r"'exclude' must be a list of str"),
    (lambda net: freeze_modules(net), ValueError, r"'include' and 'exclude' must be given"),
    (lambda net: freeze_modules(net, include=[]), ValueError, r"'include' must be a non-empty list"),
    (lambda net: freeze_modules(net, exclude=("head.*", None)), TypeError, r"'exclude' must be a list of str"),
    (lambda net: freeze_modules(net, include={"head.*"}), TypeError, r"'include' must be a list of str"),
])
def test_invalid_arguments_raise_and_change_nothing(call, error, pattern):
    net = TinyNet()
    net.head.bias.requires_grad = False
    before = _state(net)
    with pytest.raises(error, match=pattern):
        call(net)
    assert _state(net) == before


@pytest.mark.parametrize("call", [lambda model: freeze_modules(model, include=["*"]),
                                  lambda model: freeze_delta(model, "lora"),
                                  lambda model: freeze_from_config(model, "freeze.yaml")])
def test_model_that_is_not_a_cell_raises_type_error(call):
    with pytest.raises(TypeError, match=r"'model' must be a mindspore.nn.Cell, but got \{'w': 1\}"):
        call({"w": 1})


def test_mode_matching_no_param_raises_and_names_the_mode():
    net = _plain_net()
    with pytest.raises(ValueError, match=r"mode 'ptuning2' matches no parameter.*'mindpet_delta_ptuning2'"):
        freeze_delta(net, "ptuning2")
    assert _trainable(net) == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_bitfit_on_a_net_without_biases_raises():
    with pytest.raises(ValueError, match=r"mode 'bitfit' matches no parameter.*'\*bias'"):
        freeze_delta(nn.Dense(4, 2, has_bias=False), "bitfit")


def test_freeze_from_config_yaml_with_mode(tmp_path):
    config_path = tmp_path / "freeze.yaml"
    config_path.write_text("train:\n  epochs: 3\nfreeze:\n  mode: LoRA\n  exclude: ['*head*']\n")
    trainable = freeze_from_config(TinyNet(), config_path)
    assert trainable == sorted(MODE_PARAMS["lora"] + HEAD_PARAMS)


def test_freeze_from_config_yml_without_mode_uses_freeze_modules(tmp_path):
    config_path = tmp_path / "freeze.yml"
    config_path.write_text("freeze:\n  include: ['*']\n  exclude: ['head.*']\n")
    assert freeze_from_config(TinyNet(), str(config_path)) == HEAD_PARAMS


def test_freeze_from_config_json(tmp_path):
    config_path = tmp_path / "freeze.json"
    config_path.write_text(json.dumps({"freeze": {"mode": "prefixtuning", "include": ["*prefix*"],
                                                  "exclude": ["head.bias"]}}))
    assert freeze_from_config(TinyNet(), config_path) == ["head.bias"]


def test_freeze_from_config_missing_file(tmp_path):
    missing = tmp_path / "absent.yaml"
    with pytest.raises(FileNotFoundError, match="absent.yaml"):
        freeze_from_config(TinyNet(), missing)


@pytest.mark.parametrize("file_name, text, error, pattern", [
    ("bad.yaml", "freeze:\n  exclude: [*head*]\n", ValueError, r"bad.yaml' is not valid YAML"),
    ("bad.json", '{"freeze": {"exclude": ["head.*"]', ValueError, r"bad.json' is not valid JSON"),
    ("freeze.txt", "freeze: {}", ValueError, r"freeze.txt' must end in .yaml, .yml, .json, but ends in '.txt'"),
    ("list.yaml", "- freeze\n", ValueError, r"list.yaml' must hold a mapping at the top level, but holds list"),
    ("nokey.json", '{"frozen": {}}', ValueError, r"nokey.json' has no 'freeze' key.*\['frozen'\]"),
    ("flat.yaml", "freeze: ['head.*']\n", ValueError, r"key 'freeze' in the config file '.*flat.yaml' must hold a"),
    ("unknown.yaml", "freeze:\n  inclde: ['*']\n", ValueError, r"unknown.yaml' has unknown keys \['inclde'\]"),
    ("empty.json", '{"freeze": {}}', ValueError, r"empty.json' is empty"),
    ("str.yaml", "freeze:\n  include: 'head.*'\n", TypeError, r"str.yaml.*'freeze.include' must be a list of str"),
    ("null.yaml", "freeze:\n  exclude:\n", TypeError, r"null.yaml.*'freeze.exclude' must be a list of str"),
    ("nolist.json", '{"freeze": {"include": []}}', ValueError, r"nolist.json.*'freeze.include' must be a non-empty"),
    ("mode.json", '{"freeze": {"mode": "lorra"}}', ValueError, r"mode.json.*'freeze.mode' must be one of .*'lorra'"),
    ("mode.yaml", "freeze:\n  mode: 1\n", TypeError, r"mode.yaml.*'freeze.mode' must be a str"),
])
def test_freeze_from_config_rejects_bad_files(tmp_path, file_name, text, error, pattern):
    config_path = tmp_path / file_name
    config_path.write_text(text)
    net = TinyNet()
    with pytest.raises(error, match=pattern):
        freeze_from_config(net, config_path)
    assert _trainable(net) == ALL_PARAMS


def _alias_bomb(levels):
    """The YAML 'billion laughs': each level is a list of nine aliases of the one before."""
    names = "abcdefghijklmnop"
    lines = ["a: &a [" + ",".join(["lol"] * 9) + "]"]
    for level in range(1, levels):
        lines.append(f"{names[level]}: &{names[level]} [" + ",".join([f"*{names[level - 1]}"] * 9) + "]")
    lines.append(f"freeze:\n  include: *{names[levels - 1]}\n")
    return "\n".join(lines)


def test_freeze_from_config_refuses_a_yaml_alias_bomb(tmp_path):
    """
    Feature: YAML aliases.
    Description: A 9-level alias bomb of under 400 bytes, whose include list expands to 9**9 strings (the old message
        quoting it grew 9-fold per level: 312 million characters and 4 s at 8 levels).
    Expectation: ValueError naming the first alias, in well under a second, with a short message; nothing frozen.
    """
    config_path = tmp_path / "bomb.yaml"
    config_path.write_text(_alias_bomb(9))
    assert config_path.stat().st_size < 400
    net = TinyNet()
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"uses the YAML alias '\*a' at line 2, column \d+; freeze configs may not "
                                         r"use aliases") as info:
        freeze_from_config(net, config_path)
    assert time.perf_counter() - start < 0.5
    assert len(str(info.value)) < 500
    assert _trainable(net) == ALL_PARAMS


def test_freeze_from_config_accepts_anchors_without_aliases(tmp_path):
    """
    Feature: Anchors alone are harmless.
    Description: A config that defines an anchor but never refers to it.
    Expectation: It loads as usual.
    """
    config_path = tmp_path / "anchor.yaml"
    config_path.write_text("freeze: &settings\n  mode: lora\n  exclude: ['head.*']\n")
    assert freeze_from_config(TinyNet(), config_path) == sorted(MODE_PARAMS["lora"] + HEAD_PARAMS)


def test_freeze_from_config_refuses_a_file_over_1_mib_before_reading_it(tmp_path, monkeypatch):
    """
    Feature: Bounded reads.
    Description: A JSON config of 1 MiB + 1 byte; opening files is made to fail, to show the file is never read.
    Expectation: ValueError giving the size and the limit.
    """
    config_path = tmp_path / "big.json"
    config_path.write_text('{"freeze": {"include": ["' + "x" * (1024 * 1024 - 28) + '"]}}')
    assert config_path.stat().st_size == 1024 * 1024 + 1

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was opened")

    monkeypatch.setattr("builtins.open", no_reading)
    with pytest.raises(ValueError, match=r"big.json' is 1,048,577 bytes; a freeze config may be at most 1,048,576 "
                                         r"bytes"):
        freeze_from_config(TinyNet(), config_path)


def test_freeze_from_config_quotes_long_values_shortened(tmp_path):
    """
    Feature: Bounded messages.
    Description: A 'freeze' section that is a list of 100,000 numbers (about 700 KB of JSON).
    Expectation: The error quotes the value in a few hundred characters.
    """
    config_path = tmp_path / "long.json"
    config_path.write_text(json.dumps({"freeze": list(range(100_000))}))
    with pytest.raises(ValueError, match=r"must hold a mapping .*, but holds \[0, 1, 2, .*\.\.\.\]") as info:
        freeze_from_config(TinyNet(), config_path)
    assert len(str(info.value)) < 500


@pytest.mark.parametrize("call, argument, pattern, closest", [
    (lambda net: freeze_delta(net, "lora", exclude=["head"]), "exclude", "'head'",
     "['head.bias', 'head.weight', 'embed.weight']. Patterns match whole names: did you mean '*head*'?"),
    (lambda net: freeze_modules(net, include=["encoder.0.query.wieght"]), "include", "'encoder.0.query.wieght'",
     "['encoder.0.query.weight', "),
])
def test_pattern_matching_nothing_warns_with_the_closest_names(call, argument, pattern, closest, caplog):
    """
    Feature: Patterns that match nothing.
    Description: exclude=['head'] without a wildcard (the head's parameters are 'head.weight' and 'head.bias'), and
        a misspelt include pattern.
    Expectation: A WARNING naming the argument, the pattern and the closest parameter names (with a wildcard
        suggestion when one would match); the call still returns normally.
    """
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        call(TinyNet())
    warnings = [record for record in caplog.records if record.name == "mindpet" and record.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"the {argument} pattern {pattern} matches no parameter name, so it changes nothing" in message
    assert f"the closest names are {closest}" in message


def test_matching_patterns_do_not_warn(caplog):
    """
    Feature: No false alarms.
    Description: Patterns that each match a parameter.
    Expectation: No warning.
    """
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        freeze_delta(TinyNet(), "lora", include=["*lora_a"], exclude=["head.*"])
    assert not [record for record in caplog.records if record.name == "mindpet"]


def test_freeze_from_config_bad_path_type():
    with pytest.raises(TypeError, match=r"'config_path' must be a str or os.PathLike, but got 7"):
        freeze_from_config(TinyNet(), 7)


def test_freeze_from_config_yaml_without_pyyaml(tmp_path, monkeypatch):
    config_path = tmp_path / "freeze.yaml"
    config_path.write_text("freeze:\n  mode: lora\n")
    # A None entry in sys.modules makes `import yaml` raise ImportError, as if PyYAML were not installed.
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ImportError, match=r"pip install pyyaml"):
        freeze_from_config(TinyNet(), config_path)


def test_freeze_from_config_json_works_without_pyyaml(tmp_path, monkeypatch):
    config_path = tmp_path / "freeze.json"
    config_path.write_text('{"freeze": {"mode": "adapter"}}')
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert freeze_from_config(TinyNet(), config_path) == MODE_PARAMS["adapter"]


@pytest.mark.parametrize("mode, make_optimizer", [
    ("lora", lambda params: nn.Momentum(params, learning_rate=0.1, momentum=0.9)),
    ("bitfit", lambda params: nn.Adam(params, learning_rate=0.01)),
])
def test_training_updates_only_trainable_params(graph_mode, mode, make_optimizer):
    net = TinyNet()
    trainable = freeze_delta(net, mode, exclude=["*head*"])
    before = {param.name: param.asnumpy().copy() for param in net.get_parameters()}
    train_step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), make_optimizer(net.trainable_params()))
    features = Tensor(np.random.normal(size=(6, 4)).astype(np.float32))
    labels = Tensor(np.random.normal(size=(6, 2)).astype(np.float32))
    for _ in range(3):
        train_step(features, labels)
    after = {param.name: param.asnumpy() for param in net.get_parameters()}
    frozen = sorted(set(ALL_PARAMS) - set(trainable))
    assert frozen and all(np.array_equal(before[name], after[name]) for name in frozen)
    assert all(not np.array_equal(before[name], after[name]) for name in trainable)
