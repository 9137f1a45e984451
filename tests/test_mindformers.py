"""mindpet on MindFormers' own models, unedited: injection into its ``Linear`` layers, and ``mindformers.pet``
running on this package. Skipped where MindFormers is not installed (``.ci/run`` installs it)."""
import os
import tempfile

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

# MindFormers writes its logs (and get_pet_model its adapter_config.json) under ./output unless told otherwise.
os.environ.setdefault("LOCAL_DEFAULT_PATH", tempfile.mkdtemp(prefix="mindformers_"))
llama = pytest.importorskip("mindformers.models.llama")

from mindpet import LoraConfig, get_delta_model, plan_delta, trainable_summary  # noqa: E402
from mindpet.delta import LoRADense  # noqa: E402

VOCAB = 128
SEQ = 16


def _tiny_llama():
    ms.set_seed(0)
    config = llama.LlamaConfig(num_layers=2, hidden_size=64, num_heads=4, vocab_size=VOCAB, seq_length=SEQ,
                               compute_dtype="float32", param_init_type="float32", layernorm_compute_type="float32",
                               softmax_compute_type="float32", rotary_dtype="float32", use_rope_slice=True,
                               fused_rms_norm=False)  # the fused RmsNorm kernel does not exist on CPU
    model = llama.LlamaForCausalLM(config)
    model.set_train(True)  # the model returns its loss only while training
    return model


def _tokens():
    # Token 0 is padding, which the loss ignores; the model shifts (batch, SEQ + 1) ids into inputs and labels.
    return Tensor(np.random.default_rng(0).integers(1, VOCAB, size=(2, SEQ + 1)).astype(np.int32))


def _train(model, steps, learning_rate):
    trainable = [param for param in model.get_parameters() if param.requires_grad]
    step = nn.TrainOneStepCell(model, nn.AdamWeightDecay(trainable, learning_rate=learning_rate))
    step.set_train(True)
    ids = _tokens()
    return [float(step(ids).asnumpy().reshape(-1)[0]) for _ in range(steps)]


@pytest.mark.parametrize("mode_name,steps,learning_rate", [("graph", 20, 5e-2), ("pynative", 8, 1e-2)])
def test_lora_injected_into_the_unedited_llama_trains(mode_name, steps, learning_rate):
    ms.set_context(mode=ms.GRAPH_MODE if mode_name == "graph" else ms.PYNATIVE_MODE)
    try:
        model = _tiny_llama()
        loss_before = model(_tokens()).asnumpy()
        model = get_delta_model(model, LoraConfig(target_modules=["wq", "wv"], lora_rank=4, lora_alpha=8))
        cells = dict(model.cells_and_names())
        lora_paths = sorted(path for path, cell in cells.items() if isinstance(cell, LoRADense))
        assert lora_paths == [f"model.layers.{i}.attention.{name}" for i in range(2) for name in ("wq", "wv")]
        assert sorted(param.name for param in model.get_parameters() if param.requires_grad) == sorted(
            f"{path}.mindpet_delta_lora_{ab}" for path in lora_paths for ab in "ab")
        # B starts at zero: the injected model computes exactly what the original did.
        assert np.array_equal(model(_tokens()).asnumpy(), loss_before)
        frozen = {param.name: param.asnumpy().copy() for param in model.get_parameters() if not param.requires_grad}
        losses = _train(model, steps, learning_rate)
        assert losses[-1] < losses[0] - 0.05
        assert all(np.array_equal(param.asnumpy(), frozen[param.name])
                   for param in model.get_parameters() if param.name in frozen)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_all_dense_reaches_every_linear_and_keeps_the_activation():
    model = _tiny_llama()
    plan = plan_delta(model, LoraConfig(target_modules="all-dense", exclude_modules=["lm_head"]))
    assert len(plan.matched) == 14 and {cell.cell_type for cell in plan.matched} == {"Linear"}
    model = get_delta_model(model, LoraConfig(target_modules=["w1"]))
    gate = dict(model.cells_and_names())["model.layers.0.feed_forward.w1"]
    assert type(gate.activation).__name__ == "LlamaSiLU"
    assert trainable_summary(model).trainable == 2 * 8 * (64 + 256)


def test_mindformers_pet_runs_on_this_package(graph_mode):
    from mindformers.pet import LoraConfig as MindFormersLoraConfig
    from mindformers.pet import get_pet_model
    model = get_pet_model(_tiny_llama(), MindFormersLoraConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                                                              target_modules=".*wq|.*wv"))
    assert sum(isinstance(cell, LoRADense) for _, cell in model.cells_and_names()) == 4
    assert all("mindpet_delta_lora" in param.name for param in model.get_parameters() if param.requires_grad)
    losses = _train(model, 20, learning_rate=5e-2)
    assert losses[-1] < losses[0] - 0.05


def test_mindformers_prefix_tuning_freezes_with_this_package(graph_mode):
    from mindformers.pet import PrefixTuningConfig, get_pet_model
    model = get_pet_model(_tiny_llama(), PrefixTuningConfig(prefix_token_num=4, mid_dim=16, dropout_rate=0.0))
    trainable = [param.name for param in model.get_parameters() if param.requires_grad]
    assert trainable and all("mindpet_delta_prefixtuning" in name for name in trainable)


def test_a_linear_with_its_weight_stored_in_out_is_skipped_by_all_dense_and_refused_by_name():
    from mindformers.modules.layers import Linear

    class Block(nn.Cell):
        def __init__(self):
            super().__init__()
            self.wide = Linear(8, 16, transpose_b=False, compute_dtype=ms.float32)
            self.proj = Linear(16, 8, compute_dtype=ms.float32)

        def construct(self, x):
            return self.proj(self.wide(x))

    plan = plan_delta(Block(), LoraConfig(target_modules="all-dense"))
    assert [cell.path for cell in plan.matched] == ["proj"]
    assert [(cell.path, cell.reason) for cell in plan.unsupported] == [
        ("wide", "its weight is stored (in, out) (transpose_b=False)")]
    with pytest.raises(ValueError, match=r"'wide' \(Linear\): its weight is stored \(in, out\)"):
        get_delta_model(Block(), LoraConfig(target_modules=["wide", "proj"]))
