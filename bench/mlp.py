"""The MLP workload: ``mlp_depth`` Dense layers of width ``mlp_width``, every one adapted by ``get_delta_model``
(``target_modules="all-dense"``), and the hand-written LoRA layer that measures the toolkit's own overhead."""
import math

import mindspore as ms
import numpy as np
from bert.methods import apply_method
from mindspore import Parameter, Tensor, nn
from mindspore.common.initializer import HeUniform, initializer
from mindspore.ops import operations as P

from bench import presets
from mindpet.graph import freeze_modules

LORA_SHAPE = {"lora_rank": presets.LORA_RANK, "lora_alpha": presets.LORA_ALPHA}
NOT_APPLICABLE = {"ptuning2": "P-Tuning v2 prepends key/value prefixes to attention layers; an MLP has none.",
                  "prompt_tuning": "prompt tuning prepends virtual tokens to token embeddings; an MLP has none.",
                  "ptuning": "P-tuning v1 prepends virtual tokens to token embeddings; an MLP has none."}
ACTIVATION = "relu"


class MLP(nn.Cell):
    """``depth`` layers ``dense_cls(width, width)`` with ReLU between them (none after the last).

    Args:
        width (int): input, hidden and output width.
        depth (int): number of layers.
        dense_cls (type): ``nn.Dense`` or a drop-in replacement. Default: ``nn.Dense``.
        **dense_kwargs: passed to every layer.
    """

    def __init__(self, width, depth, dense_cls=nn.Dense, **dense_kwargs):
        super().__init__()
        self.layers = nn.CellList([dense_cls(width, width, activation=ACTIVATION if index < depth - 1 else None,
                                             **dense_kwargs) for index in range(depth)])

    def construct(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class HandWrittenLoRADense(nn.Cell):
    """The least code a LoRA layer needs: ``act(dense(x) + (x A^T) B^T * scaling)`` with an ``nn.Dense`` inside.

    It has LoRADense's shapes and arithmetic but none of its validation, dtype handling, dropout or merge switch,
    so ``LoRADense`` step time over this layer's is the toolkit's overhead.

    Args:
        in_channels (int): input width.
        out_channels (int): output width.
        lora_rank (int): rank of the update.
        lora_alpha (float): the update is scaled by ``lora_alpha / lora_rank``.
        activation (str, optional): applied after the sum, as LoRADense does. Default: ``None``.
    """

    def __init__(self, in_channels, out_channels, lora_rank, lora_alpha, activation=None):
        super().__init__()
        self.dense = nn.Dense(in_channels, out_channels)
        self.lora_a = Parameter(initializer(HeUniform(negative_slope=math.sqrt(5)), (lora_rank, in_channels)),
                                name="lora_a")
        self.lora_b = Parameter(initializer("zeros", (out_channels, lora_rank)), name="lora_b")
        self.matmul = P.MatMul(transpose_b=True)
        self.scaling = lora_alpha / lora_rank
        self.activation = nn.get_activation(activation) if activation else None

    def construct(self, x):
        y = self.dense(x) + self.matmul(self.matmul(x, self.lora_a), self.lora_b) * self.scaling
        if self.activation is not None:
            y = self.activation(y)
        return y


def build_mlp(method, preset):
    """An MLP of ``nn.Dense`` layers with ``method`` applied to every layer and every other parameter frozen
    (``'full'`` trains everything).

    Args:
        method (str): a method of :data:`bench.workloads.METHODS` that applies to an MLP.
        preset (bench.presets.Preset): the shapes.

    Returns:
        MLP.
    """
    net = MLP(preset.mlp_width, preset.mlp_depth)
    apply_method(net, method, target_modules="all-dense", head=None, **presets.HYPERPARAMETERS)
    return net


def build_hand_written_lora_mlp(preset):
    """The MLP of hand-written LoRA layers with the base Dense weights frozen."""
    net = MLP(preset.mlp_width, preset.mlp_depth, HandWrittenLoRADense, **LORA_SHAPE)
    freeze_modules(net, include=["*.dense.*"])
    return net


def mlp_batch(preset, seed=0):
    """``(inputs, target)``: a random regression batch of ``mlp_batch`` rows."""
    rng = np.random.default_rng(seed)
    shape = (preset.mlp_batch, preset.mlp_width)
    return ((Tensor(rng.standard_normal(shape), ms.float32),),
            Tensor(rng.standard_normal(shape), ms.float32))


def mlp_loss():
    return nn.MSELoss()
