"""The adapter-file entries of DoRA, IA3, prompt tuning, P-tuning v1 and LoRA on an NF4 base: PEFT's layout, the
settings a held cell must share with the file, and their errors. Round trips into fresh networks in GRAPH and
PYNATIVE are in test_adapter_files.py, the real-PEFT ones in test_peft_interop.py, ``mindpet merge`` in test_cli.py."""
import json
import logging
import os

import mindspore as ms
import numpy as np
import pytest
from injection_models import TinyNet
from mindspore import nn
from virtual_token_helpers import WIDTH, SteeredModel

from mindpet import IA3Config, LoraConfig, freeze_delta, get_delta_model, load_delta, quantize_base, save_delta
from mindpet.checkpoint.adapter_dir import CONFIG_FILE, WEIGHTS_FILE, adapter_metadata, write_adapter_directory
from mindpet.checkpoint.safetensors_file import read_safetensors
from mindpet.delta import IA3Dense, LoRADense, PromptEncoder, PromptTuningEmbedding
from mindpet.registry import method_of_cell


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def _tiny(seed=0):
    ms.set_seed(seed)
    return TinyNet()


def _randomize(net, seed=3):
    rng = np.random.default_rng(seed)
    for param in net.trainable_params():
        param.set_data(ms.Tensor(param.asnumpy() + rng.normal(0, 0.3, param.shape).astype(np.float32)))


def _read(folder):
    with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as file:
        fields = json.load(file)
    tensors, metadata = read_safetensors(os.path.join(folder, WEIGHTS_FILE))
    return fields, tensors, metadata


def _rewrite(folder, **fields):
    """The adapter directory with some JSON fields replaced."""
    config, tensors, metadata = _read(folder)
    config.update(fields)
    write_adapter_directory(folder, config, tensors, metadata)


def _values(net):
    return {param.name: param.asnumpy().copy() for param in net.get_parameters()}


def _assert_unchanged(net, before):
    assert all(np.array_equal(value, before[name]) for name, value in _values(net).items())


def _ia3_net():
    net = get_delta_model(_tiny(), IA3Config(target_modules=["k_proj", "mlp.1"], feedforward_modules=["mlp.1"]))
    _randomize(net)
    return net


def test_ia3_file_is_in_peft_layout(tmp_path):
    net = _ia3_net()
    fields, tensors, _ = _read(save_delta(net, str(tmp_path / "ia3")))
    assert fields["peft_type"] == "IA3" and fields["fan_in_fan_out"] is False
    assert fields["feedforward_modules"] == ["layers.0.mlp.1", "layers.1.mlp.1"]
    assert fields["target_modules"] == ["layers.0.attn.k_proj", "layers.0.mlp.1", "layers.1.attn.k_proj",
                                        "layers.1.mlp.1"]
    key = tensors["base_model.model.layers.0.attn.k_proj.ia3_l"]
    feedforward = tensors["base_model.model.layers.1.mlp.1.ia3_l"]
    assert key.shape == (16, 1) and feedforward.shape == (1, 32) and len(tensors) == 4
    np.testing.assert_array_equal(feedforward[0], net.layers[1].mlp[1].mindpet_delta_ia3_scale.asnumpy())


def test_ia3_settings_and_peft_fields_are_checked(tmp_path):
    folder = save_delta(_ia3_net(), str(tmp_path / "ia3"))
    # Held cells that rescale the other side would misread every vector.
    held = _tiny()
    held.layers[0].mlp[1] = IA3Dense(32, 16, feedforward=False)
    held = get_delta_model(held, IA3Config(target_modules=["k_proj", "layers.1.mlp.1"],
                                           feedforward_modules=["layers.1.mlp.1"]))
    before = _values(held)
    with pytest.raises(ValueError, match="'layers.0.mlp.1' has feedforward=False but .* records feedforward=True"):
        load_delta(held, folder)
    _assert_unchanged(held, before)
    # PEFT's str feedforward_modules is a full-match regular expression on the file's paths.
    _rewrite(folder, feedforward_modules=r"layers\.\d\.attn\.k_proj")
    with pytest.raises(ValueError, match=r"'base_model.model.layers.0.attn.k_proj.ia3_l' has shape \(16, 1\) .* "
                                         r"needs \(1, 16\)"):
        load_delta(_tiny(), folder)
    _rewrite(folder, fan_in_fan_out=True)
    with pytest.raises(ValueError, match="sets fan_in_fan_out=True; mindpet computes ia3 only with "
                                         "fan_in_fan_out=False"):
        load_delta(_tiny(), folder)


def test_dora_and_rslora_files_and_settings(tmp_path):
    net = get_delta_model(_tiny(), LoraConfig(target_modules=["q_proj"], lora_rank=2, lora_alpha=4, use_dora=True))
    _randomize(net)
    folder = save_delta(net, str(tmp_path / "dora"))
    fields, tensors, _ = _read(folder)
    assert fields["use_dora"] is True and fields["use_rslora"] is False
    magnitude = tensors["base_model.model.layers.1.attn.q_proj.lora_magnitude_vector"]
    np.testing.assert_array_equal(magnitude, net.layers[1].attn.q_proj.mindpet_delta_lora_magnitude.asnumpy())
    # A held plain LoRA cell would drop the magnitude's rescaling: refused.
    held = get_delta_model(_tiny(), LoraConfig(target_modules=["q_proj"], lora_rank=2, lora_alpha=4))
    before = _values(held)
    with pytest.raises(ValueError, match="has use_dora=False but .* records use_dora=True"):
        load_delta(held, folder)
    _assert_unchanged(held, before)
    _rewrite(folder, use_dora=False, use_rslora=True)
    rslora = get_delta_model(_tiny(), LoraConfig(target_modules=["q_proj"], lora_rank=2, lora_alpha=4,
                                                 use_rslora=True))
    # The magnitude tensors have no parameter in a rsLoRA network.
    with pytest.raises(ValueError, match="2 tensors of the file have no parameter"):
        load_delta(rslora, folder)


def _steered(cell, seed=0):
    """The frozen toy model steered by ``cell``, whose parameters alone train."""
    ms.set_seed(seed)
    model = SteeredModel(cell)
    freeze_delta(model, method_of_cell(cell).name)
    return model


def test_prompt_tuning_file_is_peft_single_tensor(tmp_path):
    net = _steered(PromptTuningEmbedding(4, WIDTH))
    folder = save_delta(net, str(tmp_path / "prompt"))
    fields, tensors, metadata = _read(folder)
    assert list(tensors) == ["prompt_embeddings"] and tensors["prompt_embeddings"].shape == (4, WIDTH)
    assert fields["peft_type"] == "PROMPT_TUNING" and "target_modules" not in fields
    assert (fields["num_virtual_tokens"], fields["token_dim"], fields["num_transformer_submodules"],
            fields["task_type"]) == (4, WIDTH, 1, "FEATURE_EXTRACTION")
    assert json.loads(metadata["base_fingerprint"]) == {}  # no base weight is adapted

    # The file loads into the one prompt cell of the network, whatever its path.
    class Elsewhere(nn.Cell):
        def __init__(self):
            super().__init__()
            self.model = _steered(PromptTuningEmbedding(4, WIDTH), seed=1)

    other = Elsewhere()
    assert load_delta(other, folder) == ([], [])
    np.testing.assert_array_equal(other.model.virtual_tokens.mindpet_delta_prompt_tuning_embedding.asnumpy(),
                                  tensors["prompt_embeddings"])


def test_prompt_files_need_exactly_one_matching_cell(tmp_path):
    folder = save_delta(_steered(PromptTuningEmbedding(4, WIDTH)), str(tmp_path / "prompt"))
    with pytest.raises(ValueError, match="loads into the one PromptTuningEmbedding of the network, which holds none"):
        load_delta(_tiny(), folder)
    two = nn.SequentialCell([_steered(PromptTuningEmbedding(4, WIDTH)), _steered(PromptTuningEmbedding(4, WIDTH))])
    with pytest.raises(ValueError, match=r"which holds 2 \(\['0.virtual_tokens', '1.virtual_tokens'\]\)"):
        load_delta(two, folder)
    with pytest.raises(ValueError, match="holds 2 prompt_tuning cells .* holds the tensors of one"):
        save_delta(two, str(tmp_path / "two"))
    longer = _steered(PromptTuningEmbedding(6, WIDTH))
    before = _values(longer)
    with pytest.raises(ValueError, match="has num_virtual_tokens=6 but .* records num_virtual_tokens=4"):
        load_delta(longer, folder)
    _assert_unchanged(longer, before)
    _rewrite(folder, num_transformer_submodules=2)
    with pytest.raises(ValueError, match="sets num_transformer_submodules=2"):
        load_delta(_steered(PromptTuningEmbedding(4, WIDTH)), folder)


def test_ptuning_file_holds_peft_prompt_and_the_encoder(tmp_path):
    encoder = PromptEncoder(4, WIDTH, encoder_hidden_size=5, encoder_reparameterization_type="LSTM",
                            encoder_num_layers=1)
    net = _steered(encoder)
    folder = save_delta(net, str(tmp_path / "ptuning"))
    fields, tensors, _ = _read(folder)
    assert fields["peft_type"] == "P_TUNING" and (fields["encoder_reparameterization_type"],
                                                   fields["encoder_hidden_size"], fields["encoder_num_layers"]) == \
        ("LSTM", 5, 1)
    np.testing.assert_array_equal(tensors["prompt_embeddings"], encoder.virtual_token_embeddings().asnumpy())
    own = sorted(param.name.split("virtual_tokens.")[1] for param in net.trainable_params())
    assert sorted(tensors) == sorted(own + ["prompt_embeddings"])

    other = _steered(PromptEncoder(4, WIDTH, encoder_hidden_size=5, encoder_reparameterization_type="LSTM",
                                   encoder_num_layers=2))
    with pytest.raises(ValueError, match="has encoder_num_layers=2 but .* records encoder_num_layers=1"):
        load_delta(other, folder)

    # PEFT's own P-tuning file: the encoder's output alone. Refused even when not strict; nothing changes.
    config, tensors, metadata = _read(folder)
    peft_folder = str(tmp_path / "peft_ptuning")
    write_adapter_directory(peft_folder, config, {"prompt_embeddings": tensors["prompt_embeddings"]}, metadata)
    fresh = _steered(PromptEncoder(4, WIDTH, encoder_hidden_size=5, encoder_reparameterization_type="LSTM",
                                   encoder_num_layers=1), seed=2)
    before = _values(fresh)
    with pytest.raises(ValueError, match="holds only \\['prompt_embeddings'\\] of the ptuning delta: PEFT saves a "
                                         "P-tuning adapter as the encoder's output alone"):
        load_delta(fresh, peft_folder, strict=False)
    _assert_unchanged(fresh, before)
    # The documented way: the same tensor as a prompt-tuning table gives the same virtual tokens.
    _rewrite(peft_folder, peft_type="PROMPT_TUNING")
    table = _steered(PromptTuningEmbedding(4, WIDTH), seed=3)
    load_delta(table, peft_folder)
    np.testing.assert_allclose(table.virtual_tokens.virtual_token_embeddings().asnumpy(),
                               encoder.virtual_token_embeddings().asnumpy())


def _qlora(block_size=16, quantize=True):
    net = _tiny()
    if quantize:
        net = quantize_base(net, ["q_proj"], block_size=block_size)
    return net


def test_lora_on_nf4_saves_only_lora_and_records_the_quantization(tmp_path, caplog):
    trained = get_delta_model(_qlora(), LoraConfig(target_modules=["q_proj"], lora_rank=2, lora_alpha=4))
    _randomize(trained)
    folder = save_delta(trained, str(tmp_path / "qlora"))
    _, tensors, metadata = _read(folder)
    assert sorted(tensors) == sorted(f"base_model.model.layers.{i}.attn.q_proj.lora_{ab}.weight"
                                     for i in range(2) for ab in "AB")
    fingerprint = json.loads(metadata["base_fingerprint"])["layers.0.attn.q_proj.weight"]
    assert fingerprint["shape"] == [16, 16]
    assert {key: fingerprint["quantization"][key] for key in ("quant_type", "block_size", "double_quant")} == \
        {"quant_type": "nf4", "block_size": 16, "double_quant": True}

    # Same base: silent. A float or otherwise quantized base of the same shapes: loaded, with a warning naming the
    # weight and both storages (PEFT users load 4-bit-trained adapters on 16-bit bases).
    caplog.set_level(logging.WARNING, logger="mindpet")
    same = _qlora()
    load_delta(same, folder)
    assert "stored otherwise" not in caplog.text
    x = ms.Tensor(np.random.default_rng(7).normal(size=(2, 5, 16)).astype(np.float32))
    np.testing.assert_allclose(same(x).asnumpy(), trained(x).asnumpy(), rtol=1e-5, atol=1e-5)
    for base, storage in ((_qlora(quantize=False), "an unquantized weight"),
                          (_qlora(block_size=8), "nf4 (block_size=8, double_quant=True)")):
        caplog.clear()
        load_delta(base, folder)
        assert "made on a base stored otherwise than this one at 2 layer(s), e.g. 'layers.0.attn.q_proj.weight': " \
               f"made on nf4 (block_size=16, double_quant=True), loaded onto {storage}" in caplog.text
        np.testing.assert_array_equal(base.layers[0].attn.q_proj.mindpet_delta_lora_b.asnumpy(),
                                      trained.layers[0].attn.q_proj.mindpet_delta_lora_b.asnumpy())
    assert isinstance(base.layers[0].attn.q_proj, LoRADense)


def test_a_quantized_base_of_another_shape_is_still_refused(tmp_path):
    trained = get_delta_model(_qlora(), LoraConfig(target_modules=["q_proj"], lora_rank=2, lora_alpha=4))
    folder = save_delta(trained, str(tmp_path / "qlora"))
    fields, tensors, metadata = _read(folder)
    fingerprint = json.loads(metadata["base_fingerprint"])
    fingerprint["layers.0.attn.q_proj.weight"]["shape"] = [16, 32]
    write_adapter_directory(folder, fields, tensors, {**metadata, "base_fingerprint": json.dumps(fingerprint)})
    with pytest.raises(ValueError, match="first differing weight is 'layers.0.attn.q_proj.weight'"):
        load_delta(_qlora(), folder)
    assert adapter_metadata(None)["format"] == "mindpet-adapter"
