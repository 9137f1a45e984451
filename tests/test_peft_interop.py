"""Adapter directories against the real Hugging Face PEFT, on the pretrained all-MiniLM-L6-v2 of examples/bert.

(a) A LoRA adapter randomised in PEFT (nonzero B, per-layer rank and alpha), saved by PEFT, loads with ``load_delta``
into the MindSpore MiniLM and gives PEFT's ``last_hidden_state`` within 1e-4. (b) An adapter mindpet saved loads with
``PeftModel.from_pretrained`` and gives mindpet's outputs within 1e-4. The same both ways for rsLoRA, DoRA, IA3 and
prompt tuning (whose virtual tokens enter through the example's embeddings hook); mindpet's P-tuning file loads in
PEFT, and PEFT's (the encoder's output alone) is refused by ``load_delta``. PEFT's IA3 with its BERT defaults adapts
the layers (and feed-forward layers) that the example's IA3 targets adapt. PEFT refuses the ``peft_type`` of methods
it lacks. Skipped only where torch, transformers or peft cannot be imported. The PEFT fixture is made here, at test
time (``_make_peft_adapter``), so no binary is committed.
"""
import json
import os
import warnings

import mindspore as ms
import numpy as np
import pytest

# Read before transformers is imported: the model is a local folder, nothing is fetched.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from bert.modeling import BertClassifier, BertConfig, BertModel  # noqa: E402
from bert.weights import BACKBONE_PREFIX, hf_to_mindspore_name, model_dir, model_file, read_pretrained  # noqa: E402
from injection_models import TinyNet  # noqa: E402

from mindpet import AdapterConfig, freeze_delta, get_delta_model, load_delta, save_delta  # noqa: E402
from mindpet.checkpoint.adapter_dir import CONFIG_FILE, WEIGHTS_FILE  # noqa: E402
from mindpet.checkpoint.safetensors_file import read_safetensors, write_safetensors  # noqa: E402
from mindpet.cli import EXIT_OK, main  # noqa: E402
from mindpet.delta import IA3Dense, LoRADense, PromptEncoder, PromptTuningEmbedding  # noqa: E402

TOLERANCE = 1e-4


def torch_to_cell_path(path):
    """A torch BertModel module path as the example's cell path (``attention.self`` is ``self_attention`` there)."""
    return path.replace(".attention.self.", ".attention.self_attention.")


def cell_to_torch_path(path):
    return path.replace(".attention.self_attention.", ".attention.self.")


def _torch_bert():
    torch.manual_seed(0)
    return transformers.BertModel.from_pretrained(model_dir(), add_pooling_layer=False).eval()


def _mindspore_bert(weights):
    net = BertModel(BertConfig.from_json(model_file("config.json")), prefix=None)
    params = {param.name: param for param in net.get_parameters()}
    for name, value in weights.items():
        params[name].set_data(ms.Tensor(value))
    net.set_train(False)
    return net


def _batch():
    rng = np.random.default_rng(0)
    input_ids = rng.integers(1000, 20000, size=(2, 12)).astype(np.int64)
    mask = np.ones((2, 12), np.int64)
    mask[1, 9:] = 0
    return input_ids, mask


def _torch_hidden(model, batch):
    with torch.no_grad():
        output = model(input_ids=torch.tensor(batch[0]), attention_mask=torch.tensor(batch[1]))
    return output.last_hidden_state.numpy()


def _mindspore_hidden(net, batch):
    return net(ms.Tensor(batch[0], ms.int32), ms.Tensor(batch[1], ms.int32)).asnumpy()


def _make_peft_adapter(folder, **variant):
    """A PEFT LoRA adapter on query and value with random A and B, rank 2 on layer 0's query, alpha 4 on every value
    (``variant``: ``use_rslora`` or ``use_dora``; DoRA's magnitudes are moved off the row norms too); returns the PEFT
    model that saved it."""
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False,
                             rank_pattern={"layer.0.attention.self.query": 2}, alpha_pattern={"value": 4}, **variant)
    return _randomised_peft(config, folder, {"lora_B": 0.05, "lora_magnitude_vector": None})


def _randomised_peft(config, folder, noise):
    """``config`` applied to the torch MiniLM, the parameters whose names hold a key of ``noise`` randomised (an added
    normal of that scale; None: multiplied by ``1 + 0.2 * normal``), saved to ``folder``; returns the PEFT model."""
    model = peft.get_peft_model(_torch_bert(), config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = next((value for key, value in noise.items() if key in name), 0)
            if scale is None:
                param.mul_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif scale:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def pretrained():
    weights = read_pretrained()
    return {name[len(BACKBONE_PREFIX):]: value for name, value in weights.items()}


@pytest.fixture
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def test_a_peft_adapter_loads_into_the_mindspore_minilm(pretrained, pynative, tmp_path):
    folder = str(tmp_path / "peft")
    peft_model = _make_peft_adapter(folder)
    batch = _batch()
    expected = _torch_hidden(peft_model, batch)
    net = _mindspore_bert(pretrained)
    plain = _mindspore_hidden(net, batch)
    np.testing.assert_allclose(plain, _torch_hidden(_torch_bert(), batch), atol=TOLERANCE)
    assert np.abs(plain - expected).max() > 100 * TOLERANCE
    result = load_delta(net, folder, key_map=torch_to_cell_path)
    assert result.missing == [] and result.unexpected == []
    query0 = net.encoder.layer[0].attention.self_attention.query
    value3 = net.encoder.layer[3].attention.self_attention.value
    assert isinstance(query0, LoRADense) and (query0.lora_rank, query0.lora_alpha) == (2, 8)
    assert (value3.lora_rank, value3.lora_alpha) == (4, 4)
    np.testing.assert_allclose(_mindspore_hidden(net, batch), expected, atol=TOLERANCE)

    # Saved back under torch's paths, the tensors are PEFT's own, bit for bit.
    again = save_delta(net, str(tmp_path / "mindpet"), key_map=cell_to_torch_path)
    ours, _ = read_safetensors(os.path.join(again, WEIGHTS_FILE))
    theirs, _ = read_safetensors(os.path.join(folder, WEIGHTS_FILE))
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(ours[key], theirs[key]) for key in theirs)


def test_a_mindpet_adapter_loads_in_peft(pretrained, pynative, tmp_path):
    folder = str(tmp_path / "peft")
    _make_peft_adapter(folder)
    net = _mindspore_bert(pretrained)
    load_delta(net, folder, key_map=torch_to_cell_path)
    rng = np.random.default_rng(2)
    for param in net.trainable_params():
        param.set_data(ms.Tensor(rng.normal(0, 0.05, param.shape).astype(np.float32)))
    batch = _batch()
    expected = _mindspore_hidden(net, batch)
    saved = save_delta(net, str(tmp_path / "mindpet"), key_map=cell_to_torch_path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = peft.PeftConfig.from_pretrained(saved)
    assert not [w for w in caught if "Unexpected keyword" in str(w.message)]
    with open(os.path.join(saved, CONFIG_FILE), encoding="utf-8") as file:
        written = set(json.load(file))
    assert written <= {field for field in peft.LoraConfig.__dataclass_fields__}
    assert isinstance(config, peft.LoraConfig) and config.r == 4

    loaded = peft.PeftModel.from_pretrained(_torch_bert(), saved).eval()
    np.testing.assert_allclose(_torch_hidden(loaded, batch), expected, atol=TOLERANCE)
    assert np.abs(_torch_hidden(_torch_bert(), batch) - expected).max() > 100 * TOLERANCE


def test_peft_refuses_the_types_of_methods_it_lacks(tmp_path):
    net = get_delta_model(TinyNet(), AdapterConfig(target_modules=["v_proj"], bottleneck_size=4))
    folder = save_delta(net, str(tmp_path / "adapter"))
    with pytest.raises(KeyError, match="MINDPET_ADAPTER"):
        peft.PeftConfig.from_pretrained(folder)


def _randomise_delta(net, seed, scale=0.05, around_one=False):
    """Move every trainable parameter of ``net`` (its delta) to random values: ``scale`` normal, or around its value
    (``1 + scale * normal`` times it) for scales such as DoRA's magnitude and IA3's vector."""
    rng = np.random.default_rng(seed)
    for param in net.trainable_params():
        noise = rng.normal(0, scale, param.shape).astype(np.float32)
        keep = around_one or "magnitude" in param.name
        param.set_data(ms.Tensor(param.asnumpy() * (1 + noise) if keep else noise, param.dtype))


def _load_in_peft(folder):
    """``PeftModel.from_pretrained`` on the torch MiniLM, after checking that every JSON field mindpet wrote is a
    field of the PEFT config class it becomes."""
    loaded = peft.PeftModel.from_pretrained(_torch_bert(), folder).eval()
    with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as file:
        written = set(json.load(file))
    assert written <= set(type(loaded.peft_config["default"]).__dataclass_fields__)
    return loaded


def _peft_round_trip(pretrained, tmp_path, peft_model, folder, check_cells=None, around_one=False):
    """PEFT -> mindpet: ``folder`` loaded into the MindSpore MiniLM gives ``peft_model``'s hidden states; mindpet ->
    PEFT: the delta randomised again, saved, and loaded with ``PeftModel.from_pretrained``. Returns both max diffs."""
    batch = _batch()
    expected = _torch_hidden(peft_model, batch)
    net = _mindspore_bert(pretrained)
    assert np.abs(_mindspore_hidden(net, batch) - expected).max() > 100 * TOLERANCE
    result = load_delta(net, folder, key_map=torch_to_cell_path)
    assert result.missing == [] and result.unexpected == []
    if check_cells is not None:
        check_cells(net)
    into_mindpet = np.abs(_mindspore_hidden(net, batch) - expected).max()
    assert into_mindpet < TOLERANCE

    _randomise_delta(net, seed=3, around_one=around_one)
    ours = _mindspore_hidden(net, batch)
    saved = save_delta(net, str(tmp_path / "mindpet"), key_map=cell_to_torch_path)
    loaded = _load_in_peft(saved)
    into_peft = np.abs(_torch_hidden(loaded, batch) - ours).max()
    assert into_peft < TOLERANCE
    assert np.abs(_torch_hidden(peft_model, batch) - ours).max() > 100 * TOLERANCE
    return into_mindpet, into_peft


def _assert_mindpet_merge_is_peft_merge(pretrained, tmp_path, peft_model, folder):
    """``mindpet merge`` of the PEFT adapter ``folder`` into the MiniLM's weights gives the weights and biases of
    PEFT's own ``merge_and_unload`` (float32, within 1e-5); ``peft_model`` is merged in place."""
    base, out = str(tmp_path / "base.safetensors"), str(tmp_path / "merged.safetensors")
    write_safetensors(base, pretrained)
    key_map = [f"encoder.layer.{i}.attention.self=encoder.layer.{i}.attention.self_attention" for i in range(6)]
    assert main(["merge", "--base", base, "--delta", folder, "--out", out]
                + [arg for pair in key_map for arg in ("--key-map", pair)]) == EXIT_OK
    merged, _ = read_safetensors(out)
    changed = 0
    for name, value in peft_model.merge_and_unload().state_dict().items():
        ours = merged[hf_to_mindspore_name(name)[len(BACKBONE_PREFIX):]]
        np.testing.assert_allclose(ours, value.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
        changed += not np.array_equal(ours, pretrained[hf_to_mindspore_name(name)[len(BACKBONE_PREFIX):]])
    return changed


@pytest.mark.parametrize("variant", ["use_rslora", "use_dora"])
def test_rslora_and_dora_adapters_travel_both_ways(variant, pretrained, pynative, tmp_path):
    folder = str(tmp_path / "peft")
    peft_model = _make_peft_adapter(folder, **{variant: True})

    def check_cells(net):
        query0 = net.encoder.layer[0].attention.self_attention.query
        assert isinstance(query0, LoRADense) and getattr(query0, variant) and (query0.lora_rank, query0.lora_alpha) \
            == (2, 8)

    _peft_round_trip(pretrained, tmp_path, peft_model, folder, check_cells)
    # Query and value weights of 6 layers.
    assert _assert_mindpet_merge_is_peft_merge(pretrained, tmp_path, peft_model, folder) == 12


def test_ia3_adapter_travels_both_ways(pretrained, pynative, tmp_path):
    folder = str(tmp_path / "peft")
    # PEFT's list entries match by suffix: "output.dense" is the attention output too, and both are feed-forward.
    config = peft.IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"])
    peft_model = _randomised_peft(config, folder, {"ia3_l": None})
    tensors, _ = read_safetensors(os.path.join(folder, WEIGHTS_FILE))
    assert tensors["base_model.model.encoder.layer.0.output.dense.ia3_l"].shape == (1, 1536)
    assert tensors["base_model.model.encoder.layer.0.attention.self.key.ia3_l"].shape == (384, 1)

    def check_cells(net):
        layer = net.encoder.layer[2]
        assert isinstance(layer.attention.self_attention.key, IA3Dense)
        assert not layer.attention.self_attention.key.feedforward
        assert layer.output.dense.feedforward and layer.attention.output.dense.feedforward

    _peft_round_trip(pretrained, tmp_path, peft_model, folder, check_cells, around_one=True)
    # Key and value weights and biases, and the weights of both output.dense (feed-forward: input scaled, bias kept).
    assert _assert_mindpet_merge_is_peft_merge(pretrained, tmp_path, peft_model, folder) == 6 * 6


NUM_VIRTUAL_TOKENS = 5


def _prompted_minilm(pretrained, cell, method):
    """The example's BertClassifier on the pretrained MiniLM, with ``cell`` in its embeddings hook; only the
    ``method`` delta trains."""
    net = BertClassifier(BertConfig.from_json(model_file("config.json")), num_labels=2)
    params = {param.name: param for param in net.get_parameters()}
    for name, value in pretrained.items():
        params[BACKBONE_PREFIX + name].set_data(ms.Tensor(value))
    net.set_virtual_tokens(cell)
    freeze_delta(net, method)
    net.set_train(False)
    return net


def _text_hidden(torch_hidden):
    """PEFT's last_hidden_state starts with the virtual tokens; the example's BertModel returns the text's only."""
    return torch_hidden[:, NUM_VIRTUAL_TOKENS:]


def test_prompt_tuning_adapter_travels_both_ways(pretrained, pynative, tmp_path):
    folder = str(tmp_path / "peft")
    config = peft.PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=NUM_VIRTUAL_TOKENS)
    peft_model = _randomised_peft(config, folder, {"prompt_encoder": 0.5})
    batch = _batch()
    expected = _text_hidden(_torch_hidden(peft_model, batch))
    net = _prompted_minilm(pretrained, PromptTuningEmbedding(NUM_VIRTUAL_TOKENS, 384), "prompt_tuning")
    assert load_delta(net, folder) == ([], [])
    np.testing.assert_allclose(_mindspore_hidden(net.bert, batch), expected, atol=TOLERANCE)
    assert np.abs(_mindspore_hidden(net.bert, batch) - _torch_hidden(_torch_bert(), batch)).max() > 100 * TOLERANCE

    _randomise_delta(net, seed=4, scale=0.5)
    ours = _mindspore_hidden(net.bert, batch)
    saved = save_delta(net, str(tmp_path / "mindpet"))
    loaded = _load_in_peft(saved)
    np.testing.assert_allclose(_text_hidden(_torch_hidden(loaded, batch)), ours, atol=TOLERANCE)
    assert np.abs(expected - ours).max() > 100 * TOLERANCE


def test_ptuning_adapter_loads_in_peft_and_peft_ptuning_is_refused(pretrained, pynative, tmp_path):
    encoder = PromptEncoder(NUM_VIRTUAL_TOKENS, 384, encoder_hidden_size=32, compute_dtype=ms.float32)
    net = _prompted_minilm(pretrained, encoder, "ptuning")
    _randomise_delta(net, seed=5, scale=0.3)
    batch = _batch()
    ours = _mindspore_hidden(net.bert, batch)
    saved = save_delta(net, str(tmp_path / "mindpet"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = _load_in_peft(saved)
    # PEFT reads prompt_embeddings and ignores the encoder's own tensors, without a word about them.
    assert not [w for w in caught if "mindpet_delta" in str(w.message)]
    np.testing.assert_allclose(_text_hidden(_torch_hidden(loaded, batch)), ours, atol=TOLERANCE)

    folder = str(tmp_path / "peft")
    config = peft.PromptEncoderConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=NUM_VIRTUAL_TOKENS,
                                      encoder_hidden_size=32)
    _randomised_peft(config, folder, {})
    fresh = _prompted_minilm(pretrained, PromptEncoder(NUM_VIRTUAL_TOKENS, 384, encoder_hidden_size=32), "ptuning")
    before = {param.name: param.asnumpy().copy() for param in fresh.get_parameters()}
    with pytest.raises(ValueError, match="holds only \\['prompt_embeddings'\\] of the ptuning delta: PEFT saves a "
                                         "P-tuning adapter as the encoder's output alone.*PromptTuningEmbedding"):
        load_delta(fresh, folder, strict=False)
    assert all(np.array_equal(param.asnumpy(), before[param.name]) for param in fresh.get_parameters())


def test_ia3_with_peft_bert_defaults_computes_what_peft_computes(pretrained, pynative):
    """
    Feature: IA3Dense and the example's IA3 targets against PEFT's IA3 with its BERT defaults.
    Description: PEFT's ``IA3Config(task_type=None)`` on the torch MiniLM (key, value, output.dense; output.dense as
        feed-forward) with random vectors; the same vectors set into ``IA3Config`` injected into the MindSpore MiniLM.
    Expectation: the same adapted layers, feed-forward where PEFT's are, and PEFT's ``last_hidden_state`` within 1e-4.
    """
    from bert.methods import FIXED_OPTIONS, TARGETS

    from mindpet import IA3Config

    model = peft.get_peft_model(_torch_bert(), peft.IA3Config(target_modules=["key", "value", "output.dense"],
                                                              feedforward_modules=["output.dense"])).eval()
    generator = torch.Generator().manual_seed(4)
    vectors = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ia3_l" in name:
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
                path = name.split("base_model.model.", 1)[1].split(".ia3_l", 1)[0]
                vectors[torch_to_cell_path(path)] = param.numpy().reshape(-1).copy()
    feedforward = {torch_to_cell_path(name.split("base_model.model.", 1)[1]) for name, module in model.named_modules()
                   if getattr(module, "is_feedforward", False)}
    batch = _batch()
    expected = _torch_hidden(model, batch)

    net = _mindspore_bert(pretrained)
    get_delta_model(net, IA3Config(target_modules=TARGETS["ia3"], **FIXED_OPTIONS["ia3"]))
    cells = {path: cell for path, cell in net.cells_and_names() if hasattr(cell, "mindpet_delta_ia3_scale")}
    assert sorted(cells) == sorted(vectors)
    # PEFT's entry 'output.dense' names the attention output projection too: 2 feed-forward layers per block.
    assert {path for path, cell in cells.items() if cell.feedforward} == feedforward and len(feedforward) == 12
    for path, cell in cells.items():
        cell.mindpet_delta_ia3_scale.set_data(ms.Tensor(vectors[path]))
    np.testing.assert_allclose(_mindspore_hidden(net, batch), expected, atol=TOLERANCE)
    assert np.abs(_torch_hidden(_torch_bert(), batch) - expected).max() > 100 * TOLERANCE
