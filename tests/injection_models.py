"""A small network with nested names (``layers.0.attn.q_proj``), written once with plain ``nn.Dense`` and once by hand
with delta cells, for the injection tests."""
import mindspore as ms
from mindspore import nn

from mindpet.delta import AdapterDense, LoRADense, LowRankAdapterDense

WIDTH = 16
FFN = 32
CLASSES = 3
NUM_LAYERS = 2


def plain_dense(path, in_channels, out_channels, activation=None):
    return nn.Dense(in_channels, out_channels, activation=activation)


class Attention(nn.Cell):
    def __init__(self, path, make_dense):
        super().__init__()
        self.q_proj = make_dense(f"{path}.q_proj", WIDTH, WIDTH)
        self.k_proj = make_dense(f"{path}.k_proj", WIDTH, WIDTH)
        self.v_proj = make_dense(f"{path}.v_proj", WIDTH, WIDTH)
        self.o_proj = make_dense(f"{path}.o_proj", WIDTH, WIDTH, activation="relu")

    def construct(self, x):
        return self.o_proj(self.q_proj(x) * self.k_proj(x) + self.v_proj(x))


class Block(nn.Cell):
    def __init__(self, path, make_dense):
        super().__init__()
        self.attn = Attention(f"{path}.attn", make_dense)
        self.mlp = nn.SequentialCell([make_dense(f"{path}.mlp.0", WIDTH, FFN, activation="gelu"),
                                      make_dense(f"{path}.mlp.1", FFN, WIDTH)])
        self.norm = nn.LayerNorm((WIDTH,))

    def construct(self, x):
        return self.norm(x + self.mlp(self.attn(x)))


class TinyNet(nn.Cell):
    """``layers.{0,1}.attn.{q,k,v,o}_proj``, ``layers.{0,1}.mlp.{0,1}``, ``layers.{0,1}.norm`` and ``head``."""

    def __init__(self, make_dense=plain_dense):
        super().__init__()
        self.layers = nn.CellList([Block(f"layers.{index}", make_dense) for index in range(NUM_LAYERS)])
        self.head = make_dense("head", WIDTH, CLASSES)

    def construct(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(axis=1))


DENSE_PATHS = [f"layers.{i}.{name}" for i in range(NUM_LAYERS)
               for name in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.0", "mlp.1")] + ["head"]

DELTA_CELLS = {
    "lora": lambda in_channels, out_channels, activation: LoRADense(
        in_channels, out_channels, lora_rank=4, lora_alpha=8, activation=activation, compute_dtype=ms.float32),
    "adapter": lambda in_channels, out_channels, activation: AdapterDense(
        in_channels, out_channels, bottleneck_size=4, activation=activation, compute_dtype=ms.float32),
    "low_rank_adapter": lambda in_channels, out_channels, activation: LowRankAdapterDense(
        in_channels, out_channels, reduction_factor=4, low_rank_size=2, activation=activation,
        compute_dtype=ms.float32),
}


def hand_written(method, targets):
    """TinyNet with the method's cell written into the source at ``targets`` (paths)."""
    def make_dense(path, in_channels, out_channels, activation=None):
        if path in targets:
            return DELTA_CELLS[method](in_channels, out_channels, activation)
        return plain_dense(path, in_channels, out_channels, activation)
    return TinyNet(make_dense)
