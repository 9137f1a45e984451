"""Adapter directories against the real Hugging Face PEFT, on the pretrained all-MiniLM-L6-v2 of examples/bert.

(a) A LoRA adapter randomised in PEFT (nonzero B, per-layer rank and alpha), saved by PEFT, loads with ``load_delta``
into the MindSpore MiniLM and gives PEFT's ``last_hidden_state`` within 1e-4. (b) An adapter mindpet saved loads with
``PeftModel.from_pretrained`` and gives mindpet's outputs within 1e-4. PEFT refuses the ``peft_type`` of methods it
lacks. (c) PEFT's DoRA with rsLoRA, and its IA3 with the BERT defaults, compute what mindpet's cells compute with the
same tensors. Skipped only where torch, transformers or peft cannot be imported. The PEFT fixture is made here, at test
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

from bert.modeling import BertConfig, BertModel  # noqa: E402
from bert.weights import BACKBONE_PREFIX, model_dir, model_file, read_pretrained  # noqa: E402
from injection_models import TinyNet  # noqa: E402

from mindpet import AdapterConfig, get_delta_model, load_delta, save_delta  # noqa: E402
from mindpet.checkpoint.adapter_files import CONFIG_FILE, WEIGHTS_FILE  # noqa: E402
from mindpet.checkpoint.safetensors_file import read_safetensors  # noqa: E402
from mindpet.delta import LoRADense  # noqa: E402

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


def _make_peft_adapter(folder):
    """A PEFT LoRA adapter on query and value with random A and B, rank 2 on layer 0's query, alpha 4 on every value;
    returns the PEFT model that saved it."""
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False,
                             rank_pattern={"layer.0.attention.self.query": 2}, alpha_pattern={"value": 4})
    model = peft.get_peft_model(_torch_bert(), config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
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


def test_a_peft_dora_rslora_adapter_computes_the_same_in_mindspore(pretrained, pynative, tmp_path):
    """
    Feature: DoRA and rsLoRA against PEFT's own implementation (``use_dora=True, use_rslora=True``).
    Description: A PEFT adapter with random A, B and magnitudes (not the row norms) on query and value, saved by
        PEFT, loaded with ``load_delta`` into the MindSpore MiniLM.
    Expectation: PEFT's ``last_hidden_state`` within 1e-4, and the cells are DoRA cells with the rsLoRA scale.
    """
    folder = str(tmp_path / "peft_dora")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False,
                             use_dora=True, use_rslora=True)
    model = peft.get_peft_model(_torch_bert(), config).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.rand(param.shape, generator=generator))
    model.save_pretrained(folder)
    batch = _batch()
    expected = _torch_hidden(model, batch)
    net = _mindspore_bert(pretrained)
    assert np.abs(_mindspore_hidden(net, batch) - expected).max() > 100 * TOLERANCE
    result = load_delta(net, folder, key_map=torch_to_cell_path)
    assert result.missing == [] and result.unexpected == []
    query = net.encoder.layer[0].attention.self_attention.query
    assert query.use_dora and query.use_rslora and query.scaling == pytest.approx(8 / 2)
    np.testing.assert_allclose(_mindspore_hidden(net, batch), expected, atol=TOLERANCE)


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
