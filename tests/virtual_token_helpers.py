"""A frozen toy model steered by virtual tokens, shared by the prompt-tuning and P-tuning v1 tests."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindpet.delta import prepend_virtual_tokens
from mindpet.graph import freeze_delta

VOCAB, WIDTH, OUTPUTS, SEQ_LENGTH, BATCH = 11, 6, 3, 3, 4


class SteeredModel(nn.Cell):
    """Frozen word embeddings and a frozen Dense on the masked mean of the sequence, virtual tokens prepended.

    The virtual tokens enter the mean, so they can move the output anywhere: the task is to steer the frozen model's
    output to a fixed target for every input.
    """

    def __init__(self, virtual_tokens):
        super().__init__()
        rng = np.random.default_rng(5)
        self.embedding = nn.Embedding(VOCAB, WIDTH, embedding_table=Tensor(0.1 * rng.standard_normal((VOCAB, WIDTH)),
                                                                           ms.float32))
        self.head = nn.Dense(WIDTH, OUTPUTS, weight_init=Tensor(rng.standard_normal((OUTPUTS, WIDTH)), ms.float32))
        self.virtual_tokens = virtual_tokens

    def construct(self, input_ids, attention_mask):
        embeds, mask = prepend_virtual_tokens(self.embedding(input_ids), attention_mask,
                                              self.virtual_tokens(input_ids.shape[0]))
        weights = ops.expand_dims(ops.cast(mask, ms.float32), -1)
        pooled = ops.reduce_sum(embeds * weights, 1) / ops.reduce_sum(weights, 1)
        return self.head(pooled)


class SteeringLoss(nn.Cell):
    def __init__(self, model, target):
        super().__init__(auto_prefix=False)
        self.model = model
        self.target = Tensor(target, ms.float32)

    def construct(self, input_ids, attention_mask):
        return ops.reduce_mean(ops.square(self.model(input_ids, attention_mask) - self.target))


def steering_batches(steps):
    rng = np.random.default_rng(9)
    ids = rng.integers(0, VOCAB, (steps, BATCH, SEQ_LENGTH)).astype(np.int32)
    masks = np.ones((steps, BATCH, SEQ_LENGTH), np.int32)
    masks[:, :, -1] = rng.integers(0, 2, (steps, BATCH))
    return ids, masks


def train_steering(virtual_tokens, method, steps=60, lr=0.05):
    """Freeze the toy model but ``method``'s parameters and train it to steer; returns the model, the losses, the
    parameters before and after, and the names of the trained ones."""
    model = SteeredModel(virtual_tokens)
    trained = freeze_delta(model, method)
    before = {param.name: param.asnumpy().copy() for param in model.get_parameters()}
    loss_net = SteeringLoss(model, np.array([1.5, -2.0, 0.5]))
    step = nn.TrainOneStepCell(loss_net, nn.Adam(model.trainable_params(), learning_rate=lr))
    ids, masks = steering_batches(steps)
    losses = [float(step(Tensor(ids[index]), Tensor(masks[index])).asnumpy()) for index in range(steps)]
    after = {param.name: param.asnumpy() for param in model.get_parameters()}
    return model, losses, before, after, trained


def assert_steering_trained(result, delta_names):
    """The loss fell below 25% of its start; only the delta changed; the frozen model is bit-identical."""
    model, losses, before, after, trained = result
    assert trained == sorted(delta_names)
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])
    for name in before:
        if name in trained:
            assert not np.array_equal(before[name], after[name]), name
        else:
            assert np.array_equal(before[name], after[name]), name
    return model


def assert_gradients_reach_only(model, delta_names):
    """Gradients of the steering loss go to the trainable parameters, which are exactly the delta, all nonzero."""
    params = model.trainable_params()
    assert sorted(param.name for param in params) == sorted(delta_names)
    loss_net = SteeringLoss(model, np.array([1.0, 0.0, -1.0]))
    ids, masks = steering_batches(1)
    grads = ms.grad(loss_net, grad_position=None, weights=params)(Tensor(ids[0]), Tensor(masks[0]))
    assert len(grads) == len(params)
    for param, grad in zip(params, grads):
        assert np.abs(grad.asnumpy()).max() > 0, param.name
