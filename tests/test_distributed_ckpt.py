"""merge_sliced_delta_checkpoints: rank slices of LoRA and adapter deltas back into full tensors.

Training with semi-auto parallel cannot run on CPU, so each test writes what such a run leaves behind: a strategy
file (MindSpore's protobuf classes) and one delta file per rank, sliced here with NumPy from the layouts.
"""
import json
import os
import tempfile

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn
from mindspore.train import node_strategy_pb2 as pb

from mindpet.checkpoint import atomic
from mindpet.checkpoint.atomic import STAGING_PREFIX
from mindpet.delta import AdapterDense, LoRADense
from mindpet.graph import freeze_delta, load_delta_checkpoint, merge_sliced_delta_checkpoints

IN, HIDDEN, OUT, LORA_RANK, BOTTLENECK = 6, 8, 4, 2, 4
LORA_A, LORA_B = "lora.mindpet_delta_lora_a", "lora.mindpet_delta_lora_b"
DOWN_WEIGHT, DOWN_BIAS = "adapter.mindpet_delta_adapter.down_weight", "adapter.mindpet_delta_adapter.down_bias"
UP_WEIGHT, UP_BIAS = "adapter.mindpet_delta_adapter.up_weight", "adapter.mindpet_delta_adapter.up_bias"
HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"
# Above Linux's largest pid (4194304), so no process has it.
DEAD_PID = 999999999


class DeltaNet(nn.Cell):
    def __init__(self):
        super().__init__()
        self.lora = LoRADense(IN, HIDDEN, lora_rank=LORA_RANK, lora_alpha=4, compute_dtype=ms.float32)
        self.adapter = AdapterDense(HIDDEN, HIDDEN, bottleneck_size=BOTTLENECK, compute_dtype=ms.float32)
        self.head = nn.Dense(HIDDEN, OUT)

    def construct(self, x):
        return self.head(self.adapter(self.lora(x)))


def frozen_net():
    net = DeltaNet()
    freeze_delta(net, mode="lora", exclude=["*mindpet_delta_adapter*", "*head*"])
    return net


def layout(dev_matrix, tensor_map, opt_shard_size=0, opt_shard_step=0):
    """A parameter's layout as MindSpore records it: tensor_map entry k names device-matrix dim k from the right."""
    return {"dev_matrix": dev_matrix, "tensor_map": tensor_map, "opt_size": opt_shard_size,
            "opt_step": opt_shard_step}


def replicated(devices, ndim):
    return layout([devices], [-1] * ndim)


# 2-way model parallelism, the layouts semi-auto parallel derives from these shard() strategies (MatMul with
# transpose_b and strategy ((a, b), (c, b)) has the device matrix [a, c, b] and the weight's tensor_map [1, 0]):
#   LoRADense: strategy_lora_a_matmul=((1, 2), (1, 2)) splits lora_a (rank, in) along in;
#              strategy_lora_b_matmul=((1, 1), (2, 1)), the manual's ((dp, 1), (mp, 1)) with mp=2, splits
#              lora_b (out, rank) along out.
#   AdapterDense: strategy_matmul_down_sampler=((1, 1), (2, 1)) splits down_weight (bottleneck, hidden) along
#              bottleneck, strategy_bias_down_sampler=((1, 2), (2,)) its bias, strategy_matmul_up_sampler=
#              ((1, 2), (1, 2)) splits up_weight (hidden, bottleneck) along bottleneck; up_bias and the head are
#              replicated on both devices.
MODEL_PARALLEL_2 = {
    LORA_A: layout([1, 1, 2], [1, 0]), LORA_B: layout([1, 2, 1], [1, 0]),
    DOWN_WEIGHT: layout([1, 2, 1], [1, 0]), DOWN_BIAS: layout([1, 2], [0]),
    UP_WEIGHT: layout([1, 1, 2], [1, 0]), UP_BIAS: replicated(2, 1),
    HEAD_WEIGHT: replicated(2, 2), HEAD_BIAS: replicated(2, 1),
}
# The manual's LoRADense and AdapterDense examples with dp=2 and mp=2 on 4 devices: lora_b split along out over
# mp and repeated over dp; lora_a and the adapter ((dp, 1), (1, 1)) repeated on all 4 devices (MindSpore puts the
# repeat count first in the device matrix).
MANUAL_DP2_MP2 = {
    LORA_A: layout([2, 2, 1, 1], [1, 0]), LORA_B: layout([2, 2, 1], [1, 0]),
    DOWN_WEIGHT: layout([2, 2, 1, 1], [1, 0]), DOWN_BIAS: layout([2, 2, 1], [0]),
    UP_WEIGHT: layout([2, 2, 1, 1], [1, 0]), UP_BIAS: layout([2, 2, 1], [0]),
    HEAD_WEIGHT: replicated(4, 2), HEAD_BIAS: replicated(4, 1),
}
# Optimizer sharding (enable_parallel_optimizer): replicated parameters are further split along dim 0 over the
# 2 devices, and the deltas hold those optimizer shards.
OPTIMIZER_SHARDED_2 = dict(MODEL_PARALLEL_2, **{
    HEAD_WEIGHT: layout([2], [-1, -1], opt_shard_size=2, opt_shard_step=1),
    UP_BIAS: layout([2], [-1], opt_shard_size=2, opt_shard_step=1),
})


def write_strategy(path, layouts):
    items = []
    for name, spec in layouts.items():
        parallel_layouts = pb.ParallelLayouts(
            dev_matrix=[pb.DevMatrix(dim=spec["dev_matrix"])], tensor_map=[pb.TensorMap(dim=spec["tensor_map"])],
            param_split_shape=[pb.ParamSplitShape()], indices_offset=[pb.IndicesOffset()], field=0,
            opt_weight_shard_step=spec["opt_step"], opt_weight_shard_size=spec["opt_size"])
        items.append(pb.ParallelLayoutItem(param_name=name, parallel_layouts=parallel_layouts))
    with open(path, "wb") as strategy_file:
        strategy_file.write(pb.ParallelStrategyMap(current_stage=0, parallel_layout_item=items).SerializeToString())
    return str(path)


def write_json_strategy(path, layouts):
    """The same layouts in the JSON form MindSpore writes for a strategy file named ``*.json``."""
    items = {name: {"dev_matrix": spec["dev_matrix"], "tensor_map": spec["tensor_map"], "param_split_shape": [],
                    "field": 0, "opt_weight_shard_step": spec["opt_step"], "opt_weight_shard_size": spec["opt_size"]}
             for name, spec in layouts.items()}
    with open(path, "w", encoding="utf-8") as strategy_file:
        json.dump({"current_stage": 0, "parallel_strategy_item": {}, "parallel_layout_item": items}, strategy_file)
    return str(path)


def rank_slice(full, spec, rank):
    """The part of ``full`` that ``rank`` holds: its coordinate in the device matrix (last dim fastest) picks the
    block along every split dimension, then the optimizer shard takes its rows."""
    dev_matrix = spec["dev_matrix"]
    coordinate = np.unravel_index(rank, dev_matrix)
    piece = full
    for axis, device_dim in enumerate(spec["tensor_map"]):
        if device_dim != -1:
            matrix_axis = len(dev_matrix) - 1 - device_dim
            piece = np.split(piece, dev_matrix[matrix_axis], axis=axis)[coordinate[matrix_axis]]
    if spec["opt_size"]:
        piece = np.split(piece, spec["opt_size"], axis=0)[(rank // spec["opt_step"]) % spec["opt_size"]]
    return piece


def trained_delta(net):
    """Full delta values, distinct per parameter and nonzero, keyed like TrainableParamsCheckPoint saves them."""
    rng = np.random.default_rng(3)
    return {param.name: rng.standard_normal(param.shape).astype(np.float32) for param in net.trainable_params()}


def write_rank_files(folder, full, layouts, fmt="ckpt", append_dict=None):
    devices = int(np.prod(next(iter(layouts.values()))["dev_matrix"]))
    files = []
    for rank in range(devices):
        os.makedirs(folder / f"rank_{rank}")
        path = str(folder / f"rank_{rank}" / f"delta-2_5.{fmt}")
        entries = [{"name": name, "data": ms.Tensor(rank_slice(value, layouts[name], rank))}
                   for name, value in full.items()]
        ms.save_checkpoint(entries, path, format=fmt, append_dict=append_dict)
        files.append(path)
    return files


def load(path):
    fmt = os.path.splitext(path)[1].lstrip(".")
    return {name: value.asnumpy() for name, value in ms.load_checkpoint(path, format=fmt).items()}


@pytest.mark.parametrize("layouts", [MODEL_PARALLEL_2, MANUAL_DP2_MP2, OPTIMIZER_SHARDED_2],
                         ids=["model_parallel_2", "manual_dp2_mp2", "optimizer_sharded_2"])
def test_merge_reproduces_the_unsliced_tensors(graph_mode, layouts, tmp_path):
    """
    Feature: merge_sliced_delta_checkpoints on LoRADense and AdapterDense deltas.
    Description: Slice full delta tensors by the strategy, one file per rank, and merge the rank folders.
    Expectation: Every merged tensor equals its unsliced original exactly, and the merged delta loads strictly
        into a fresh network of full size.
    """
    net = frozen_net()
    full = trained_delta(net)
    strategy_file = write_strategy(tmp_path / "strategy.ckpt", layouts)
    files = write_rank_files(tmp_path / "ranks", full, layouts)
    # The split parameters really are split: some rank slice is smaller than the full tensor.
    assert ms.load_checkpoint(files[0])[LORA_B].shape != full[LORA_B].shape

    output = str(tmp_path / "merged" / "delta_full.ckpt")
    shapes = merge_sliced_delta_checkpoints(str(tmp_path / "ranks"), strategy_file, output)
    assert shapes == {name: value.shape for name, value in full.items()}
    merged = load(output)
    assert sorted(merged) == sorted(full)
    for name, value in full.items():
        assert np.array_equal(merged[name], value), name
    fresh = frozen_net()
    assert load_delta_checkpoint(fresh, output).missing == []
    assert np.array_equal(fresh.lora.mindpet_delta_lora_b.asnumpy(), full[LORA_B])
    assert os.listdir(tmp_path / "merged") == ["delta_full.ckpt"]


def test_scratch_files_live_next_to_the_output(graph_mode, tmp_path, monkeypatch):
    """
    Feature: Where the merge keeps its scratch files.
    Description: Merge with $TMPDIR pointing to an empty folder; the output folder holds the staging folder of a
        killed merge (its process is gone). While transform_checkpoints runs, look where its input is.
    Expectation: The scratch files are in a '.mindpet_staging_<pid>_*' folder next to the output, not under
        $TMPDIR; afterwards the output folder holds only the merged file: the scratch and the stale folder are gone,
        and $TMPDIR is still empty.
    """
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp_root))
    monkeypatch.setattr(tempfile, "tempdir", None)
    out_dir = tmp_path / "merged"
    killed_merge = out_dir / f"{STAGING_PREFIX}{DEAD_PID}_{atomic._HOST_TAG}_x"
    (killed_merge / "source" / "rank_0").mkdir(parents=True)
    (killed_merge / "source" / "rank_0" / "delta.ckpt").write_bytes(b"16 MB in real life")

    sources = []
    transform = ms.transform_checkpoints

    def recording_transform(src_checkpoints_dir, *args, **kwargs):
        sources.append(src_checkpoints_dir)
        return transform(src_checkpoints_dir, *args, **kwargs)

    monkeypatch.setattr(ms, "transform_checkpoints", recording_transform)
    full = trained_delta(frozen_net())
    strategy_file = write_strategy(tmp_path / "strategy.ckpt", MODEL_PARALLEL_2)
    write_rank_files(tmp_path / "ranks", full, MODEL_PARALLEL_2)
    merge_sliced_delta_checkpoints(str(tmp_path / "ranks"), strategy_file, str(out_dir / "delta_full.ckpt"))

    scratch = os.path.dirname(sources[0])
    assert os.path.dirname(scratch) == str(out_dir)
    assert os.path.basename(scratch).startswith(f"{STAGING_PREFIX}{os.getpid()}_")
    assert os.listdir(out_dir) == ["delta_full.ckpt"]
    assert os.listdir(temp_root) == []


@pytest.mark.parametrize("input_format,output_format", [("safetensors", "safetensors"), ("ckpt", "safetensors")])
def test_formats_and_training_counters(graph_mode, input_format, output_format, tmp_path):
    """
    Feature: Both checkpoint formats; the file list form of `checkpoints`; append_info counters.
    Description: Rank files with epoch_num and step_num, given as a list; the output extension picks its format.
    Expectation: Exact tensors in the requested format and rank 0's counters carried over.
    """
    full = trained_delta(frozen_net())
    strategy_file = write_strategy(tmp_path / "strategy.ckpt", MODEL_PARALLEL_2)
    files = write_rank_files(tmp_path / "ranks", full, MODEL_PARALLEL_2, input_format,
                             append_dict={"epoch_num": 2, "step_num": 10})
    output = str(tmp_path / f"delta_full.{output_format}")
    merge_sliced_delta_checkpoints(files, strategy_file, output)
    merged = load(output)
    for name, value in full.items():
        assert np.array_equal(merged[name], value), name
    assert int(merged["epoch_num"]) == 2 and int(merged["step_num"]) == 10


def test_json_strategy_file(graph_mode, tmp_path):
    """
    Feature: Strategy files saved as JSON (strategy_ckpt_config save_file ending in .json).
    Description: The 2-way layouts written as JSON.
    Expectation: The merge reproduces the unsliced tensors exactly.
    """
    full = trained_delta(frozen_net())
    strategy_file = write_json_strategy(tmp_path / "strategy.json", MODEL_PARALLEL_2)
    write_rank_files(tmp_path / "ranks", full, MODEL_PARALLEL_2)
    output = str(tmp_path / "delta_full.ckpt")
    merge_sliced_delta_checkpoints(str(tmp_path / "ranks"), strategy_file, output)
    merged = load(output)
    for name, value in full.items():
        assert np.array_equal(merged[name], value), name


@pytest.fixture
def rank_setup(tmp_path):
    full = trained_delta(frozen_net())
    return {"full": full, "strategy": write_strategy(tmp_path / "strategy.ckpt", MODEL_PARALLEL_2),
            "files": write_rank_files(tmp_path / "ranks", full, MODEL_PARALLEL_2),
            "output": str(tmp_path / "delta_full.ckpt")}


def test_a_parameter_without_layout_is_refused(rank_setup, tmp_path):
    without_head = {name: spec for name, spec in MODEL_PARALLEL_2.items() if name != HEAD_WEIGHT}
    strategy = write_strategy(tmp_path / "partial.ckpt", without_head)
    with pytest.raises(ValueError, match=r"\['head.weight'\] have no layout"):
        merge_sliced_delta_checkpoints(rank_setup["files"], strategy, rank_setup["output"])
    assert not os.path.exists(rank_setup["output"])


def test_rank_count_must_match_the_strategy(rank_setup):
    with pytest.raises(ValueError, match="over 2 devices, but 1 rank checkpoints"):
        merge_sliced_delta_checkpoints(rank_setup["files"][:1], rank_setup["strategy"], rank_setup["output"])
    with pytest.raises(ValueError, match="over 2 devices, but 3 rank checkpoints"):
        merge_sliced_delta_checkpoints(rank_setup["files"] + rank_setup["files"][:1], rank_setup["strategy"],
                                       rank_setup["output"])


def test_ranks_must_hold_the_same_parameters_and_matching_slices(rank_setup, tmp_path):
    values = ms.load_checkpoint(rank_setup["files"][1])
    fewer = str(tmp_path / "fewer.ckpt")
    ms.save_checkpoint([{"name": name, "data": value} for name, value in values.items() if name != LORA_A], fewer)
    with pytest.raises(ValueError, match="rank 1 .* Every rank's delta must hold the same parameters"):
        merge_sliced_delta_checkpoints([rank_setup["files"][0], fewer], rank_setup["strategy"], rank_setup["output"])

    reshaped = str(tmp_path / "reshaped.ckpt")
    entries = [{"name": name, "data": ms.Tensor(np.zeros((1, LORA_RANK), np.float32)) if name == LORA_B else value}
               for name, value in values.items()]
    ms.save_checkpoint(entries, reshaped)
    with pytest.raises(ValueError, match=f"the slice of '{LORA_B}' is Float32\\[1, 2\\] in rank 1 but "
                                         f"Float32\\[4, 2\\] in rank 0"):
        merge_sliced_delta_checkpoints([rank_setup["files"][0], reshaped], rank_setup["strategy"],
                                       rank_setup["output"])


def test_existing_output_survives_a_refused_merge(rank_setup):
    with open(rank_setup["output"], "wb") as previous:
        previous.write(b"previous delta")
    with pytest.raises(ValueError):
        merge_sliced_delta_checkpoints(rank_setup["files"][:1], rank_setup["strategy"], rank_setup["output"])
    with open(rank_setup["output"], "rb") as previous:
        assert previous.read() == b"previous delta"


def test_missing_files_and_bad_folders(rank_setup, tmp_path):
    with pytest.raises(FileNotFoundError, match="strategy file"):
        merge_sliced_delta_checkpoints(rank_setup["files"], str(tmp_path / "none.ckpt"), rank_setup["output"])
    with pytest.raises(FileNotFoundError, match="checkpoint file"):
        merge_sliced_delta_checkpoints([rank_setup["files"][0], str(tmp_path / "gone.ckpt")],
                                       rank_setup["strategy"], rank_setup["output"])
    with pytest.raises(FileNotFoundError, match="folder"):
        merge_sliced_delta_checkpoints(str(tmp_path / "no_folder"), rank_setup["strategy"], rank_setup["output"])

    os.rename(tmp_path / "ranks" / "rank_1", tmp_path / "ranks" / "rank_2")
    with pytest.raises(ValueError, match=r"rank_0, rank_1, \.\.\. without gaps, but holds ranks \[0, 2\]"):
        merge_sliced_delta_checkpoints(str(tmp_path / "ranks"), rank_setup["strategy"], rank_setup["output"])
    os.rename(tmp_path / "ranks" / "rank_2", tmp_path / "ranks" / "rank_1")
    ms.save_checkpoint(frozen_net(), str(tmp_path / "ranks" / "rank_1" / "delta-1_5.ckpt"))
    with pytest.raises(ValueError, match="exactly one checkpoint file"):
        merge_sliced_delta_checkpoints(str(tmp_path / "ranks"), rank_setup["strategy"], rank_setup["output"])


def test_bad_arguments(rank_setup, tmp_path):
    with pytest.raises(TypeError, match="'checkpoints'"):
        merge_sliced_delta_checkpoints(7, rank_setup["strategy"], rank_setup["output"])
    with pytest.raises(ValueError, match="'checkpoints' must be a non-empty list"):
        merge_sliced_delta_checkpoints([], rank_setup["strategy"], rank_setup["output"])
    with pytest.raises(TypeError, match="'strategy_file'"):
        merge_sliced_delta_checkpoints(rank_setup["files"], None, rank_setup["output"])
    with pytest.raises(ValueError, match="'output_file' must be a path ending in one of"):
        merge_sliced_delta_checkpoints(rank_setup["files"], rank_setup["strategy"], str(tmp_path / "delta.npz"))
    not_a_strategy = tmp_path / "not_a_strategy.ckpt"
    not_a_strategy.write_bytes(b"\xff\xfe not a protobuf message")
    with pytest.raises(ValueError, match="not a readable strategy file"):
        merge_sliced_delta_checkpoints(rank_setup["files"], str(not_a_strategy), rank_setup["output"])
