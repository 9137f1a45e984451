"""Compiled GRAPH-mode training and forward steps, the units the benchmarks time and the memory processes run."""
from mindspore import nn

LEARNING_RATE = 1e-4


class NetWithLoss(nn.Cell):
    """``loss_fn(net(*inputs), target)``; the last argument is the target, the others go to ``net``."""

    def __init__(self, net, loss_fn):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn

    def construct(self, *args):
        return self.loss_fn(self.net(*args[:-1]), args[-1])


# The optimizers a workload can train with: Adam (the MLP and encoder tables) or AdamW without weight decay (the
# MiniLM example's optimizer, and torch.optim.AdamW's update on the PEFT side).
OPTIMIZERS = {"adam": lambda params: nn.Adam(params, learning_rate=LEARNING_RATE),
              "adamw": lambda params: nn.AdamWeightDecay(params, learning_rate=LEARNING_RATE, weight_decay=0.0)}


def train_step_cell(net, loss_fn, optimizer="adam"):
    """An ``nn.TrainOneStepCell`` with ``optimizer`` (a key of :data:`OPTIMIZERS`) over the parameters of ``net``
    that are trainable now.

    Freeze ``net`` first: the optimizer keeps updating every parameter it was given.
    """
    optimizer = OPTIMIZERS[optimizer](net.trainable_params())
    step = nn.TrainOneStepCell(NetWithLoss(net, loss_fn), optimizer)
    step.set_train()
    return step


def train_runner(net, loss_fn, inputs, target, optimizer="adam"):
    """A callable that runs one training step and waits for its loss."""
    step = train_step_cell(net, loss_fn, optimizer)
    args = tuple(inputs) + (target,)
    return lambda: step(*args).asnumpy()


def forward_runner(net, inputs):
    """A callable that runs one inference forward pass and waits for its output."""
    net.set_train(False)
    return lambda: net(*inputs).asnumpy()
