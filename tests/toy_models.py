"""The small regressor the workflow tests fine-tune: two tanh layers and a head."""
from mindspore import nn

IN, HIDDEN, OUT = 8, 16, 2


class Regressor(nn.Cell):
    """``dense_cls`` is nn.Dense for the pretrained base, or a delta Dense cell for fine-tuning."""

    def __init__(self, dense_cls=nn.Dense, **dense_kwargs):
        super().__init__()
        self.encoder = nn.CellList([dense_cls(IN, HIDDEN, activation="tanh", **dense_kwargs),
                                    dense_cls(HIDDEN, HIDDEN, activation="tanh", **dense_kwargs)])
        self.head = nn.Dense(HIDDEN, OUT)

    def construct(self, x):
        for layer in self.encoder:
            x = layer(x)
        return self.head(x)
