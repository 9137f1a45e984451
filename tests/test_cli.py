"""The ``mindpet`` command: inspect, merge and convert, their success and failure paths, run in-process through
``main(argv)``, plus one real ``python -m mindpet`` subprocess."""
import os
import re
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from injection_models import TinyNet

from mindpet import AdapterConfig, IA3Config, LoraConfig, get_delta_model, load_delta, save_delta
from mindpet.checkpoint.adapter_dir import WEIGHTS_FILE
from mindpet.checkpoint.safetensors_file import read_safetensors
from mindpet.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def _tiny():
    ms.set_seed(0)
    return TinyNet()


def _randomize(net, seed=3):
    rng = np.random.default_rng(seed)
    for param in net.trainable_params():
        param.set_data(ms.Tensor(rng.normal(0, 0.3, param.shape).astype(np.float32)))


@pytest.fixture
def lora_files(tmp_path):
    """A base checkpoint of TinyNet in both formats, a trained LoRA adapter directory, and the trained network."""
    base = _tiny()
    ms.save_checkpoint(base, str(tmp_path / "base.ckpt"))
    ms.save_checkpoint(base, str(tmp_path / "base.safetensors"), format="safetensors")
    trained = get_delta_model(_tiny(), LoraConfig(target_modules=["q_proj", "mlp.1"], lora_rank=2, lora_alpha=6,
                                                  alpha_pattern={"mlp.1": 3}, modules_to_save=["head"]))
    _randomize(trained)
    adapter = save_delta(trained, str(tmp_path / "adapter"))
    return tmp_path, adapter, trained


def _x():
    return ms.Tensor(np.random.default_rng(7).normal(size=(2, 5, 16)).astype(np.float32))


def _run(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_inspect_adapter_directory_and_checkpoints(lora_files, capsys):
    folder, adapter, _ = lora_files
    status, out, _ = _run(["inspect", adapter], capsys)
    assert status == EXIT_OK
    assert "method lora (peft_type LORA)" in out and "base_model.model.layers.0.attn.q_proj.lora_A.weight" in out
    assert re.search(r"^  lora_alpha +6$", out, re.MULTILINE) and re.search(r"^  r +2$", out, re.MULTILINE)
    assert "base_fingerprint" in out and "10 tensors" in out
    status, out, _ = _run(["inspect", str(folder / "base.ckpt")], capsys)
    assert status == EXIT_OK and re.search(r"^  layers.1.mlp.1.weight +\(16, 32\) float32$", out, re.MULTILINE)


def test_inspect_failures(lora_files, capsys):
    folder, adapter, _ = lora_files
    status, _, err = _run(["inspect", str(folder / "nothing.ckpt")], capsys)
    assert status == EXIT_USAGE and "'" + str(folder / "nothing.ckpt") + "' does not exist" in err
    (folder / "broken.safetensors").write_bytes(b"\xff" * 12)
    status, _, err = _run(["inspect", str(folder / "broken.safetensors")], capsys)
    assert status == EXIT_FAILURE and "broken.safetensors' is not a valid safetensors file" in err
    assert len(err.strip().splitlines()) == 1
    os.remove(os.path.join(adapter, WEIGHTS_FILE))
    status, _, err = _run(["inspect", adapter], capsys)
    assert status == EXIT_FAILURE and "has no 'adapter_model.safetensors'" in err
    status, _, err = _run(["frobnicate"], capsys)
    assert status == EXIT_USAGE and "invalid choice" in err


@pytest.mark.parametrize("extension", ["ckpt", "safetensors"])
def test_merge_equals_the_unmerged_network(lora_files, capsys, extension):
    folder, adapter, trained = lora_files
    out_path = str(folder / f"merged.{extension}")
    status, out, _ = _run(["merge", "--base", str(folder / f"base.{extension}"), "--delta", adapter, "--out",
                           out_path], capsys)
    assert status == EXIT_OK
    plain = TinyNet()
    ms.load_param_into_net(plain, ms.load_checkpoint(out_path, format=extension), strict_load=True)
    np.testing.assert_allclose(plain(_x()).asnumpy(), trained(_x()).asnumpy(), rtol=1e-5, atol=1e-5)
    # The largest change it reports is the largest scaled B A.
    changes = {}
    for path, cell in trained.cells_and_names():
        if hasattr(cell, "mindpet_delta_lora_a"):
            update = cell.scaling * cell.mindpet_delta_lora_b.asnumpy() @ cell.mindpet_delta_lora_a.asnumpy()
            changes[path + ".weight"] = np.abs(update).max()
    name = max(changes, key=changes.get)
    assert f"largest weight change: {changes[name]:.6g} in '{name}'" in out
    assert "merged 4 modules of lora" in out and "2 saved module tensors replaced" in out


MERGEABLE = {
    "rslora": LoraConfig(target_modules=["q_proj", "mlp.1"], lora_rank=4, lora_alpha=6, use_rslora=True),
    "dora": LoraConfig(target_modules=["q_proj", "mlp.1"], lora_rank=2, lora_alpha=6, alpha_pattern={"mlp.1": 3},
                       use_dora=True),
    # Output scaling scales the bias too; a feed-forward module's input scaling leaves it.
    "ia3": IA3Config(target_modules=["k_proj", "mlp.0", "mlp.1"], feedforward_modules=["mlp.1"]),
}


@pytest.mark.parametrize("variant", sorted(MERGEABLE))
def test_merge_folds_rslora_dora_and_ia3(lora_files, capsys, variant):
    folder = lora_files[0]
    trained = get_delta_model(_tiny(), MERGEABLE[variant])
    rng = np.random.default_rng(4)
    for param in trained.trainable_params():
        # Scales (DoRA's magnitudes, IA3's vectors) moved around their start, low-rank factors from zero.
        around = "magnitude" in param.name or "ia3" in param.name
        noise = rng.normal(0, 0.3, param.shape).astype(np.float32)
        param.set_data(ms.Tensor(param.asnumpy() * (1 + noise) if around else noise))
    adapter = save_delta(trained, str(folder / variant))
    out_path = str(folder / f"{variant}.ckpt")
    status, out, _ = _run(["merge", "--base", str(folder / "base.ckpt"), "--delta", adapter, "--out", out_path],
                          capsys)
    assert status == EXIT_OK
    plain = TinyNet()
    ms.load_param_into_net(plain, ms.load_checkpoint(out_path), strict_load=True)
    merged_params = {param.name: param.asnumpy() for param in plain.get_parameters()}
    base_params = {param.name: param.asnumpy() for param in _tiny().get_parameters()}
    changed = sorted(name for name in base_params if not np.array_equal(merged_params[name], base_params[name]))
    expected = {"rslora": ["layers.{}.attn.q_proj.weight", "layers.{}.mlp.1.weight"],
                "dora": ["layers.{}.attn.q_proj.weight", "layers.{}.mlp.1.weight"],
                "ia3": ["layers.{}.attn.k_proj.bias", "layers.{}.attn.k_proj.weight", "layers.{}.mlp.0.bias",
                        "layers.{}.mlp.0.weight", "layers.{}.mlp.1.weight"]}[variant]
    assert changed == sorted(name.format(i) for i in range(2) for name in expected)
    np.testing.assert_allclose(plain(_x()).asnumpy(), trained(_x()).asnumpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(_tiny()(_x()).asnumpy() - trained(_x()).asnumpy()).max() > 1e-2
    name, change = max(((name, np.abs(merged_params[name] - base_params[name]).max()) for name in changed),
                       key=lambda item: item[1])
    assert f"largest weight change: {change:.6g} in '{name}'" in out


def test_merge_failures(lora_files, capsys, tmp_path):
    folder, adapter, _ = lora_files
    base = str(folder / "base.ckpt")
    status, _, err = _run(["merge", "--base", base, "--delta", adapter, "--out", str(folder / "m.bin")], capsys)
    assert status == EXIT_USAGE and "--out" in err
    status, _, err = _run(["merge", "--base", base, "--delta", adapter, "--out", str(folder / "m.ckpt"),
                           "--key-map", "layers=blocks"], capsys)
    assert status == EXIT_FAILURE and "has no 'blocks.0.attn.q_proj.weight'" in err and "--key-map" in err
    assert not os.path.exists(folder / "m.ckpt")
    status, _, err = _run(["merge", "--base", base, "--delta", adapter, "--out", str(folder / "m.ckpt"),
                           "--key-map", "layers"], capsys)
    assert status == EXIT_USAGE and "OLD=NEW" in err
    adapter_net = get_delta_model(_tiny(), AdapterConfig(target_modules=["v_proj"], bottleneck_size=4))
    other = save_delta(adapter_net, str(tmp_path / "bottleneck"))
    status, _, err = _run(["merge", "--base", base, "--delta", other, "--out", str(folder / "m.ckpt")], capsys)
    assert status == EXIT_FAILURE and "does not fold" in err and "only ['lora', 'ia3', 'adalora'] do" in err
    status, _, err = _run(["merge", "--delta", adapter], capsys)
    assert status == EXIT_USAGE and "--base" in err


def test_convert_a_mindpet_checkpoint_into_an_adapter(lora_files, capsys):
    folder, _, trained = lora_files
    source = str(folder / "DELTA_CKP-1_10.ckpt")
    ms.save_checkpoint(trained.trainable_params(), source)
    destination = str(folder / "converted")
    status, out, _ = _run(["convert", source, destination, "--method", "lora", "--lora_rank", "2",
                           "--lora_alpha", "6", "--alpha_pattern", '{"mlp.1": 3}'], capsys)
    assert status == EXIT_OK and "wrote 10 tensors of lora (4 modules)" in out
    fresh = _tiny()
    assert load_delta(fresh, destination).missing == []
    np.testing.assert_allclose(fresh(_x()).asnumpy(), trained(_x()).asnumpy(), rtol=1e-5, atol=1e-5)


def test_convert_failures(lora_files, capsys):
    folder, adapter, trained = lora_files
    source = str(folder / "delta.ckpt")
    ms.save_checkpoint(trained.trainable_params(), source)
    status, _, err = _run(["convert", source, str(folder / "a"), "--method", "dora"], capsys)
    assert status == EXIT_USAGE and "--method" in err
    status, _, err = _run(["convert", source, str(folder / "a"), "--method", "lora", "--lora_rank", "zero"], capsys)
    assert status == EXIT_USAGE and "'lora_rank' must be" in err
    status, _, err = _run(["convert", source, adapter, "--method", "lora", "--lora_rank", "2"], capsys)
    assert status == EXIT_USAGE and "already exists" in err
    status, _, err = _run(["convert", source, str(folder / "a"), "--method", "adapter"], capsys)
    assert status == EXIT_FAILURE and "holds no adapter parameter" in err
    status, _, err = _run(["convert", source, str(folder / "a"), "--method", "prompt_tuning"], capsys)
    assert status == EXIT_USAGE and "prompt_tuning's cell is written in the model source" in err and \
        "mindpet.save_delta" in err
    # A wrong rank on the command line is caught when the directory is loaded: shapes are checked.
    status, _, _ = _run(["convert", source, str(folder / "wrong"), "--method", "lora", "--lora_rank", "3",
                         "--lora_alpha", "6"], capsys)
    assert status == EXIT_OK
    with pytest.raises(ValueError, match=r"has shape \(2, 16\).*needs \(3, 16\)"):
        load_delta(_tiny(), str(folder / "wrong"))
    assert not os.path.exists(folder / "a")


def test_convert_an_ia3_checkpoint_with_feedforward_modules(lora_files, capsys):
    folder = lora_files[0]
    trained = get_delta_model(_tiny(), MERGEABLE["ia3"])
    _randomize(trained)
    source = str(folder / "ia3.ckpt")
    ms.save_checkpoint(trained.trainable_params(), source)
    # The checkpoint's modules become exact target paths; a feed-forward entry may name them by suffix (as PEFT's
    # short names do) or by a regular expression, and both give the same file.
    for name, feedforward in (("ia3_suffix", '["mlp.1"]'), ("ia3", r".*\.mlp\.1")):
        status, out, _ = _run(["convert", source, str(folder / name), "--method", "ia3", "--feedforward_modules",
                               feedforward], capsys)
        assert status == EXIT_OK and "wrote 6 tensors of ia3 (6 modules)" in out
    suffix_tensors, _ = read_safetensors(os.path.join(str(folder / "ia3_suffix"), WEIGHTS_FILE))
    tensors, _ = read_safetensors(os.path.join(str(folder / "ia3"), WEIGHTS_FILE))
    assert tensors["base_model.model.layers.0.mlp.1.ia3_l"].shape == (1, 32)
    assert tensors["base_model.model.layers.0.mlp.0.ia3_l"].shape == (32, 1)
    assert {key: value.shape for key, value in suffix_tensors.items()} == \
        {key: value.shape for key, value in tensors.items()}
    fresh = _tiny()
    load_delta(fresh, str(folder / "ia3"))
    np.testing.assert_allclose(fresh(_x()).asnumpy(), trained(_x()).asnumpy(), rtol=1e-5, atol=1e-5)


def test_python_dash_m_mindpet(lora_files):
    _, adapter, _ = lora_files
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "mindpet", "inspect", adapter], capture_output=True, text=True,
                          env=env, check=False)
    assert done.returncode == EXIT_OK and "method lora" in done.stdout
    done = subprocess.run([sys.executable, "-m", "mindpet", "inspect"], capture_output=True, text=True, env=env,
                          check=False)
    assert done.returncode == EXIT_USAGE and done.stderr.strip().startswith("mindpet: error:")
    assert "Traceback" not in done.stderr


def test_convert_between_key_maps(lora_files, capsys):
    folder, adapter, trained = lora_files
    moved = str(folder / "moved")
    status, out, _ = _run(["convert", adapter, moved, "--key-map", "layers=model.blocks"], capsys)
    assert status == EXIT_OK and "wrote 10 tensors of lora (4 modules)" in out
    status, out, _ = _run(["inspect", moved], capsys)
    assert "base_model.model.model.blocks.1.mlp.1.lora_B.weight" in out and "base_model.model.head.weight" in out
    assert '{"model\\\\.blocks\\\\.0\\\\.mlp\\\\.1": 3' in out and "model.blocks.0.attn.q_proj.weight" in out
    fresh = _tiny()
    load_delta(fresh, moved, key_map={"model.blocks": "layers"})
    np.testing.assert_allclose(fresh(_x()).asnumpy(), trained(_x()).asnumpy(), rtol=1e-5, atol=1e-5)
    status, _, err = _run(["convert", adapter, str(folder / "same")], capsys)
    assert status == EXIT_USAGE and "--key-map" in err
    status, _, err = _run(["convert", str(folder / "base.ckpt"), str(folder / "same")], capsys)
    assert status == EXIT_USAGE and "--method" in err
