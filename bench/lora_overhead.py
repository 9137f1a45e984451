"""What LoRADense costs over the least code that computes the same thing, and what merging buys at inference."""
import numpy as np
import mindspore as ms
from mindspore import Tensor

from bench.mlp import LORA_SHAPE, MLP, build_hand_written_lora_mlp, mlp_batch, mlp_loss
from bench.training import forward_runner, train_runner
from mindpet.delta import LoRADense, merge_and_unload

# B starts at zero in training; for the inference comparison it must be non-zero, or merging would change nothing.
TRAINED_B_INIT = "normal"


def hand_written_train_runner(preset):
    """A training step of the MLP of :class:`bench.mlp.HandWrittenLoRADense` layers (base weights frozen)."""
    inputs, target = mlp_batch(preset)
    return train_runner(build_hand_written_lora_mlp(preset), mlp_loss(), inputs, target)


def _copy_parameters(source, target):
    """Give ``target`` independent copies of the values of ``source``'s parameters (matched by name)."""
    ms.load_param_into_net(target, {name: ms.Parameter(Tensor(param.asnumpy().copy()), name=name)
                                    for name, param in source.parameters_and_names()}, strict_load=True)


def _lora_mlp(preset):
    return MLP(preset.mlp_width, preset.mlp_depth, LoRADense, lora_b_init=TRAINED_B_INIT,
               compute_dtype=ms.float32, **LORA_SHAPE)


def forward_runners(preset):
    """Inference forward steps of the same MLP as ``nn.Dense`` layers, merged LoRADense, LoRADense merged and
    replaced by ``nn.Dense`` with :func:`mindpet.delta.merge_and_unload`, unmerged LoRADense and hand-written LoRA
    layers.

    The LoRADense networks share the Dense network's base weights and one non-zero update. Returns the runners
    (``dense``, ``merged``, ``unloaded``, ``unmerged``, ``hand_written``) and a check: the largest difference between
    the merged and unmerged outputs, between the unloaded and unmerged outputs, and between the unmerged and Dense
    outputs (non-zero, or the comparison would measure nothing).
    """
    dense = MLP(preset.mlp_width, preset.mlp_depth)
    unmerged = _lora_mlp(preset)
    _copy_parameters(dense, unmerged)
    merged = _lora_mlp(preset)
    _copy_parameters(unmerged, merged)
    for layer in merged.layers:
        layer.merge()
    unloaded = _lora_mlp(preset)
    _copy_parameters(unmerged, unloaded)
    # Before the first call, so that the compiled graph is the one of the nn.Dense layers.
    merge_and_unload(unloaded)
    inputs, _ = mlp_batch(preset)
    runners = {"dense": forward_runner(dense, inputs), "merged": forward_runner(merged, inputs),
               "unloaded": forward_runner(unloaded, inputs), "unmerged": forward_runner(unmerged, inputs),
               "hand_written": forward_runner(build_hand_written_lora_mlp(preset), inputs)}
    outputs = {name: run() for name, run in runners.items()}
    check = {"merged_vs_unmerged_max_abs_diff": float(np.abs(outputs["merged"] - outputs["unmerged"]).max()),
             "unloaded_vs_unmerged_max_abs_diff": float(np.abs(outputs["unloaded"] - outputs["unmerged"]).max()),
             "unmerged_vs_dense_max_abs_diff": float(np.abs(outputs["unmerged"] - outputs["dense"]).max())}
    return runners, check
