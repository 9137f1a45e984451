"""NumPy references and the fine-tuning workflow shared by the Prefix-Tuning and P-Tuning v2 tests."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.dataset import NumpySlicesDataset
from mindspore.train import CheckpointConfig, Model

import tiny_decoder
from mindpet.graph import TrainableParamsCheckPoint, freeze_delta, load_delta_checkpoint

TRAIN_SAMPLES, TRAIN_BATCH, TRAIN_EPOCHS = 512, 16, 4


def numpy_mlp(rows, dense_in, dense_out):
    """``tanh(rows W_in^T + b_in) W_out^T + b_out`` in float64 from the two nn.Dense cells' parameters."""
    hidden = np.tanh(rows @ dense_in.weight.asnumpy().T.astype(np.float64) + dense_in.bias.asnumpy())
    return hidden @ dense_out.weight.asnumpy().T.astype(np.float64) + dense_out.bias.asnumpy()


def numpy_layout(rows, num_layers, num_heads, head_dim, batch_size):
    """Lay rows ``(prefix_length, 2 * num_layers * num_heads * head_dim)`` out as
    ``(2 * num_layers, batch, heads, prefix_length, head_dim)``, element by element: the column of entry
    ``(layer, key_or_value, head, dim)`` is ``((2 * layer + key_or_value) * num_heads + head) * head_dim + dim``."""
    prefix_length = rows.shape[0]
    out = np.empty((2 * num_layers, batch_size, num_heads, prefix_length, head_dim))
    for block in range(2 * num_layers):
        for head in range(num_heads):
            for position in range(prefix_length):
                for dim in range(head_dim):
                    out[block, :, head, position, dim] = rows[position, (block * num_heads + head) * head_dim + dim]
    return out


def numpy_causal_attention_with_prefix(x, attention, prefix_key_value):
    """The tiny decoder's attention block in float64: x (batch, seq, hidden), prefix (2, batch, heads, P, head_dim).

    Keys and values are the prefix followed by the tokens; query ``t`` sees every prefix position and tokens
    ``0..t``.
    """
    def dense(cell, inputs):
        return inputs @ cell.weight.asnumpy().T.astype(np.float64) + cell.bias.asnumpy()

    batch, seq_length, hidden_size = x.shape
    heads = attention.num_heads
    head_dim = hidden_size // heads
    prefix_length = prefix_key_value.shape[3]

    def split_heads(values):
        return values.reshape(batch, seq_length, heads, head_dim).transpose(0, 2, 1, 3)

    query = split_heads(dense(attention.query, x))
    key = np.concatenate([prefix_key_value[0], split_heads(dense(attention.key, x))], axis=2)
    value = np.concatenate([prefix_key_value[1], split_heads(dense(attention.value, x))], axis=2)
    scores = query @ key.transpose(0, 1, 3, 2) / np.sqrt(head_dim)
    visible = np.zeros((seq_length, prefix_length + seq_length), dtype=bool)
    for query_position in range(seq_length):
        visible[query_position, :prefix_length + query_position + 1] = True
    scores = np.where(visible, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    context = (weights @ value).transpose(0, 2, 1, 3).reshape(batch, seq_length, hidden_size)
    return dense(attention.output, context)


class SumWithWeights(nn.Cell):
    """``sum(w_i * output_i)`` over a cell's (tuple of) outputs with fixed random weights: a scalar whose gradient
    reaches every output element. It keeps the wrapped cell's parameter names."""

    def __init__(self, cell, output_shapes):
        super().__init__(auto_prefix=False)
        self.cell = cell
        rng = np.random.default_rng(3)
        self.weights = [Tensor(rng.standard_normal(shape), ms.float32) for shape in output_shapes]

    def construct(self, *args):
        outputs = self.cell(*args)
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        total = 0.0
        for output, weight in zip(outputs, self.weights):
            total = total + (output * weight).sum()
        return total


def parameter_gradients(cell, output_shapes, *args):
    """Gradients of :class:`SumWithWeights` with respect to every trainable parameter of ``cell``, by name."""
    loss = SumWithWeights(cell, output_shapes)
    params = cell.trainable_params()
    grads = ms.value_and_grad(loss, grad_position=None, weights=params)(*args)[1]
    return {param.name: grad.asnumpy() for param, grad in zip(params, grads)}


def lm_loss_gradients(net):
    """Gradients of the tiny decoder's next-token loss with respect to its trainable parameters, by name."""
    input_ids, labels = tiny_decoder.cycle_task(4, seed=5)
    loss = nn.WithLossCell(net, tiny_decoder.TokenCrossEntropy())
    params = net.trainable_params()
    grads = ms.value_and_grad(loss, grad_position=None, weights=params)(Tensor(input_ids), Tensor(labels))[1]
    return {param.name: grad.asnumpy() for param, grad in zip(params, grads)}


def values(net):
    return {param.name: param.asnumpy().copy() for param in net.get_parameters()}


def prepare(net, base_ckpt, method):
    """Load the base weights into a network with prefixes and freeze all but the ``method`` parameters."""
    not_loaded, _ = ms.load_param_into_net(net, ms.load_checkpoint(base_ckpt))
    trainable = freeze_delta(net, method)
    assert sorted(not_loaded) == trainable, "only the prefix parameters may be missing from the base checkpoint"
    return trainable


def fine_tune(build_net, method, folder, learning_rate):
    """Save a randomly initialized plain TinyDecoder as the 'pretrained' base, build the network with prefixes,
    load the base into it, freeze it with ``freeze_delta(net, method)`` and fine-tune it on the cycle task with
    Model.train and TrainableParamsCheckPoint, in GRAPH mode.

    Returns a dict with the network, the base checkpoint path, the trainable names, parameter values before and
    after, the loss on the training data before and after, the delta checkpoint path and the trainable share in
    percent.
    """
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(1)
    base_ckpt = str(folder / "base.ckpt")
    ms.save_checkpoint(tiny_decoder.TinyDecoder(), base_ckpt)
    net = build_net()
    trainable = prepare(net, base_ckpt, method)
    input_ids, labels = tiny_decoder.cycle_task(TRAIN_SAMPLES, seed=0)
    before = values(net)
    start_loss = tiny_decoder.mean_token_loss(net, input_ids, labels)
    dataset = NumpySlicesDataset({"input_ids": input_ids, "labels": labels}, shuffle=True)
    dataset = dataset.batch(TRAIN_BATCH, drop_remainder=True)
    steps = dataset.get_dataset_size() * TRAIN_EPOCHS
    checkpoint = TrainableParamsCheckPoint(prefix=method, directory=str(folder / "delta"),
                                           config=CheckpointConfig(save_checkpoint_steps=steps, keep_checkpoint_max=1))
    optimizer = nn.Adam(net.trainable_params(), learning_rate=learning_rate)
    Model(net, loss_fn=tiny_decoder.TokenCrossEntropy(), optimizer=optimizer).train(
        TRAIN_EPOCHS, dataset, callbacks=[checkpoint], dataset_sink_mode=False)
    total = sum(param.size for param in net.get_parameters())
    trained = sum(param.size for param in net.get_parameters() if param.name in trainable)
    return {"net": net, "base_ckpt": base_ckpt, "trainable": trainable, "before": before, "after": values(net),
            "start_loss": start_loss,
            "end_loss": tiny_decoder.mean_token_loss(net, input_ids, labels),
            "delta_file": checkpoint.latest_ckpt_file_name, "trainable_percent": 100.0 * trained / total}


def assert_only_the_trainable_parameters_changed(trained):
    """Frozen parameters are bit-identical after training, and every trainable one moved."""
    for name, before in trained["before"].items():
        changed = not np.array_equal(before, trained["after"][name])
        assert changed == (name in trained["trainable"]), name


def assert_delta_file_holds_exactly_the_trained_values(trained):
    saved = ms.load_checkpoint(trained["delta_file"])
    assert sorted(saved) == trained["trainable"]
    for name in trained["trainable"]:
        assert np.array_equal(saved[name].asnumpy(), trained["after"][name]), name


def reload_outputs_match(trained, fresh, method):
    """Load the delta checkpoint into ``fresh`` (with the base weights) and compare outputs with the trained net."""
    prepare(fresh, trained["base_ckpt"], method)
    report = load_delta_checkpoint(fresh, trained["delta_file"])
    assert not report.missing and not report.unexpected, report
    input_ids = Tensor(tiny_decoder.cycle_task(6, seed=9)[0])
    trained["net"].set_train(False)
    fresh.set_train(False)
    return np.array_equal(fresh(input_ids).asnumpy(), trained["net"](input_ids).asnumpy())


def all_params_nonzero(grads):
    return {name: bool(np.any(grad != 0)) for name, grad in grads.items()}

