"""RDropLoss against a NumPy reference, its gradient, its errors, rdrop_repeat's layout, and an R-Drop training run."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.dataset import NumpySlicesDataset
from mindspore.train import Callback, Model

from mindpet.delta import RDropLoss, rdrop_repeat

NUM_CLASSES = 5


def reference_loss(logits, labels, alpha):
    """The documented formula in float64: CE over all rows + alpha/4 * pair mean of KL(P||Q) + KL(Q||P)."""
    logits = np.asarray(logits, np.float64)
    num_classes = logits.shape[-1]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    rows = log_probs.reshape(-1, num_classes)
    if np.issubdtype(labels.dtype, np.integer):
        cross_entropy = -rows[np.arange(len(rows)), labels.reshape(-1)].mean()
    else:
        cross_entropy = -(labels.reshape(-1, num_classes).astype(np.float64) * rows).sum(axis=-1).mean()
    first, second = log_probs[0::2], log_probs[1::2]
    kl_first_second = (np.exp(first) * (first - second)).sum(axis=-1)
    kl_second_first = (np.exp(second) * (second - first)).sum(axis=-1)
    return cross_entropy + alpha * (kl_first_second + kl_second_first).mean() / 4


def random_logits(shape, dtype=np.float32):
    return (np.random.standard_normal(shape) * 2).astype(dtype)


def class_indices(shape, dtype=np.int32):
    return np.random.randint(0, NUM_CLASSES, shape).astype(dtype)


def class_probabilities(shape, dtype=np.float32):
    return np.random.dirichlet(np.ones(NUM_CLASSES), shape[:-1]).astype(dtype)


class FixedAlphaLoss(nn.Cell):
    """RDropLoss called from a construct with a fixed alpha, as a model calls it; GRAPH mode can differentiate it."""

    def __init__(self, alpha):
        super().__init__()
        self.loss = RDropLoss()
        self.alpha = alpha

    def construct(self, logits, label_ids):
        return self.loss(logits, label_ids, self.alpha)


# Every case runs eagerly; GRAPH mode, where each alpha is a compile-time constant, runs a sparse and a dense one.
REFERENCE_CASES = [("pynative", 0, "sparse"), ("pynative", 0.5, "dense"), ("pynative", 4, "sparse"),
                   ("pynative", 10.0, "dense"), ("graph", 0.5, "sparse"), ("graph", 10.0, "dense")]


@pytest.mark.parametrize("mode, alpha, labels", REFERENCE_CASES, indirect=["mode"])
def test_matches_numpy_reference(mode, alpha, labels):
    logits = random_logits((8, NUM_CLASSES))
    label_ids = class_indices((8,)) if labels == "sparse" else class_probabilities(logits.shape)
    loss = RDropLoss()(Tensor(logits), Tensor(label_ids), alpha)
    assert loss.shape == () and loss.dtype == ms.float32
    np.testing.assert_allclose(float(loss), reference_loss(logits, label_ids, alpha), rtol=1e-5)


@pytest.mark.parametrize("label_dtype", [np.int64, np.float16])
def test_float16_logits_are_computed_in_float32(mode, label_dtype):
    logits = random_logits((6, NUM_CLASSES), np.float16)
    if np.issubdtype(label_dtype, np.integer):
        label_ids = class_indices((6,), label_dtype)
    else:
        label_ids = class_probabilities(logits.shape, label_dtype)
    loss = RDropLoss()(Tensor(logits), Tensor(label_ids), 3)
    assert loss.dtype == ms.float32
    # float32 arithmetic on the float16 inputs: far tighter than a float16 computation (~1e-3) could be.
    np.testing.assert_allclose(float(loss), reference_loss(logits, label_ids, 3), rtol=1e-5)


def test_default_alpha_is_four(mode):
    logits = random_logits((4, NUM_CLASSES))
    label_ids = class_indices((4,))
    loss = RDropLoss()(Tensor(logits), Tensor(label_ids))
    np.testing.assert_allclose(float(loss), reference_loss(logits, label_ids, 4), rtol=1e-5)
    assert abs(reference_loss(logits, label_ids, 4) - reference_loss(logits, label_ids, 3)) > 1e-3


@pytest.mark.parametrize("logits_shape, label_shape", [((6, NUM_CLASSES), (6, 1)),
                                                       ((6, 3, NUM_CLASSES), (6, 3)),
                                                       ((6, 3, NUM_CLASSES), (6, 3, 1))])
def test_label_layouts_and_per_position_logits(mode, logits_shape, label_shape):
    logits = random_logits(logits_shape)
    label_ids = class_indices(label_shape)
    loss = RDropLoss()(Tensor(logits), Tensor(label_ids), 2)
    np.testing.assert_allclose(float(loss), reference_loss(logits, label_ids, 2), rtol=1e-5)


@pytest.mark.parametrize("logits_dtype", [np.float32, np.float16])
def test_identical_copies_give_plain_cross_entropy(mode, logits_dtype):
    logits = np.repeat(random_logits((4, NUM_CLASSES)), 2, axis=0).astype(logits_dtype)
    label_ids = np.repeat(class_indices((4,)), 2)
    # A large alpha: any leftover of the consistency term would show.
    loss = RDropLoss()(Tensor(logits), Tensor(label_ids), 100.0)
    plain = nn.CrossEntropyLoss()(Tensor(logits.astype(np.float32)), Tensor(label_ids))
    np.testing.assert_allclose(float(loss), float(plain), rtol=1e-6)


def test_gradient_matches_finite_differences(graph_mode):
    logits = random_logits((6, NUM_CLASSES))
    label_ids = class_indices((6,))
    alpha = 4.0
    gradient = ms.grad(FixedAlphaLoss(alpha), grad_position=0)(Tensor(logits), Tensor(label_ids)).asnumpy()

    # Central differences of the float64 reference at the same (float32) logits.
    step = 1e-6
    logits64 = logits.astype(np.float64)
    expected = np.zeros_like(logits64)
    for index in np.ndindex(*logits.shape):
        shift = np.zeros_like(logits64)
        shift[index] = step
        expected[index] = (reference_loss(logits64 + shift, label_ids, alpha)
                           - reference_loss(logits64 - shift, label_ids, alpha)) / (2 * step)
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6)
    # The KL term carries gradient too: without it (alpha=0) the gradient differs.
    without_kl = ms.grad(FixedAlphaLoss(0.0), grad_position=0)(Tensor(logits), Tensor(label_ids))
    assert np.abs(gradient - without_kl.asnumpy()).max() > 1e-3


def test_gradient_of_kl_term_vanishes_for_identical_copies(graph_mode):
    logits = np.repeat(random_logits((3, NUM_CLASSES)), 2, axis=0)
    label_ids = np.repeat(class_indices((3,)), 2)
    with_kl = ms.grad(FixedAlphaLoss(8.0), grad_position=0)(Tensor(logits), Tensor(label_ids)).asnumpy()
    without_kl = ms.grad(FixedAlphaLoss(0.0), grad_position=0)(Tensor(logits), Tensor(label_ids)).asnumpy()
    assert np.abs(without_kl).max() > 1e-3
    np.testing.assert_allclose(with_kl, without_kl, rtol=1e-6, atol=1e-7)


def test_dynamic_batch_in_graph_mode(graph_mode):
    net = FixedAlphaLoss(4)
    net.set_inputs(Tensor(shape=[None, NUM_CLASSES], dtype=ms.float32), Tensor(shape=[None], dtype=ms.int32))
    for batch in (4, 8):
        logits, label_ids = random_logits((batch, NUM_CLASSES)), class_indices((batch,))
        np.testing.assert_allclose(float(net(Tensor(logits), Tensor(label_ids))),
                                   reference_loss(logits, label_ids, 4), rtol=1e-5)


class RepeatInside(nn.Cell):
    """rdrop_repeat called inside construct, as a model does it."""

    def construct(self, first, second, third):
        return rdrop_repeat(first, second, third)


class RepeatOne(nn.Cell):
    def construct(self, tensor):
        return rdrop_repeat(tensor)


def test_rdrop_repeat_interleaves_rows(mode):
    rank1 = np.array([3, 1, 4], np.int32)
    rank2 = np.arange(6, dtype=np.float32).reshape(3, 2)
    rank3 = np.random.standard_normal((3, 2, 4)).astype(np.float16)
    for repeated in (rdrop_repeat(Tensor(rank1), Tensor(rank2), Tensor(rank3)),
                     RepeatInside()(Tensor(rank1), Tensor(rank2), Tensor(rank3))):
        assert isinstance(repeated, tuple) and len(repeated) == 3
        np.testing.assert_array_equal(repeated[0].asnumpy(), [3, 3, 1, 1, 4, 4])
        np.testing.assert_array_equal(repeated[1].asnumpy(), [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]])
        assert repeated[2].shape == (6, 2, 4) and repeated[2].dtype == ms.float16
        for row in range(3):
            for copy in (2 * row, 2 * row + 1):
                np.testing.assert_array_equal(repeated[2].asnumpy()[copy], rank3[row])


def test_rdrop_repeat_of_one_tensor_returns_a_tensor(mode):
    mask = np.array([[True, False], [False, False]])
    for repeated in (rdrop_repeat(Tensor(mask)), RepeatOne()(Tensor(mask))):
        assert isinstance(repeated, Tensor) and repeated.dtype == ms.bool_
        np.testing.assert_array_equal(repeated.asnumpy(), np.repeat(mask, 2, axis=0))


@pytest.mark.parametrize("mode", ["pynative"], indirect=True)
@pytest.mark.parametrize("alpha", [True, "4", None, [4], Tensor(4.0)])
def test_non_number_alpha_raises_type_error(mode, alpha):
    logits, label_ids = Tensor(random_logits((4, NUM_CLASSES))), Tensor(class_indices((4,)))
    with pytest.raises(TypeError, match="'alpha' must be an int or a float"):
        RDropLoss()(logits, label_ids, alpha)


@pytest.mark.parametrize("mode", ["pynative"], indirect=True)
@pytest.mark.parametrize("alpha", [-1, float("nan"), float("inf")])
def test_negative_or_non_finite_alpha_raises_value_error(mode, alpha):
    logits, label_ids = Tensor(random_logits((4, NUM_CLASSES))), Tensor(class_indices((4,)))
    with pytest.raises(ValueError, match="'alpha' must be a finite number >= 0"):
        RDropLoss()(logits, label_ids, alpha)


def test_alpha_errors_raise_while_compiling_in_graph_mode(graph_mode):
    logits, label_ids = Tensor(random_logits((4, NUM_CLASSES))), Tensor(class_indices((4,)))
    with pytest.raises(TypeError, match="'alpha' must be an int or a float"):
        FixedAlphaLoss(True)(logits, label_ids)
    with pytest.raises(TypeError, match="'alpha' must be an int or a float, but got a Tensor"):
        RDropLoss()(logits, label_ids, Tensor(4.0))
    with pytest.raises(ValueError, match="'alpha' must be a finite number >= 0"):
        FixedAlphaLoss(-0.5)(logits, label_ids)


def test_odd_batch_raises_value_error(mode):
    logits, label_ids = Tensor(random_logits((5, NUM_CLASSES))), Tensor(class_indices((5,)))
    with pytest.raises(ValueError, match="'logits' must be a Tensor with an even batch size"):
        RDropLoss()(logits, label_ids)
    with pytest.raises(ValueError, match="'logits' must be a Tensor with an even batch size"):
        FixedAlphaLoss(4)(logits, label_ids)


def test_logits_errors(mode):
    loss_fn = RDropLoss()
    with pytest.raises(TypeError, match="'logits'"):
        loss_fn(Tensor(class_indices((4, NUM_CLASSES))), Tensor(class_indices((4,))))
    with pytest.raises(ValueError, match="'logits'.*rank >= 2"):
        loss_fn(Tensor(random_logits((4,))), Tensor(class_indices((4,))))


@pytest.mark.parametrize("label_shape", [(6,), (4, 2), (4, 1, 1, 2)])
def test_sparse_labels_of_the_wrong_shape_raise_value_error(mode, label_shape):
    with pytest.raises(ValueError, match="'label_ids'"):
        RDropLoss()(Tensor(random_logits((4, NUM_CLASSES))), Tensor(class_indices(label_shape)))


def test_dense_labels_of_the_wrong_shape_or_dtype_raise(mode):
    logits = Tensor(random_logits((4, NUM_CLASSES)))
    with pytest.raises(ValueError, match="'label_ids'"):
        RDropLoss()(logits, Tensor(np.full((4, NUM_CLASSES + 1), 0.1, np.float32)))
    with pytest.raises(TypeError, match="'label_ids'"):
        RDropLoss()(logits, Tensor(np.zeros(4, np.bool_)))


class RepeatNothing(nn.Cell):
    def construct(self, tensor):
        return rdrop_repeat()


class RepeatWithNumber(nn.Cell):
    def construct(self, tensor):
        return rdrop_repeat(tensor, 3)


class RepeatScalarTensor(nn.Cell):
    def construct(self, tensor):
        return rdrop_repeat(tensor, tensor[0])


def test_rdrop_repeat_errors(mode):
    tensor = Tensor(np.arange(3, dtype=np.float32))
    with pytest.raises(TypeError, match="rdrop_repeat.*at least one Tensor"):
        rdrop_repeat()
    with pytest.raises(TypeError, match=r"'tensors\[1\]' must be a Tensor"):
        rdrop_repeat(tensor, np.arange(3))
    with pytest.raises(ValueError, match=r"'tensors\[0\]' must be a Tensor of rank >= 1"):
        rdrop_repeat(Tensor(1.0))
    with pytest.raises(TypeError, match="rdrop_repeat.*at least one Tensor"):
        RepeatNothing()(tensor)
    with pytest.raises(TypeError, match=r"'tensors\[1\]' must be a Tensor"):
        RepeatWithNumber()(tensor)
    with pytest.raises(ValueError, match=r"'tensors\[1\]' must be a Tensor of rank >= 1"):
        RepeatScalarTensor()(tensor)


# A small classification task for the training run: labels from a random linear teacher.
FEATURES, HIDDEN, SAMPLES, BATCH, EPOCHS, ALPHA = 12, 32, 192, 16, 10, 4.0


class Classifier(nn.Cell):
    def __init__(self, dropout_rate=0.3):
        super().__init__()
        self.hidden = nn.Dense(FEATURES, HIDDEN, activation="relu")
        self.dropout = nn.Dropout(p=dropout_rate)
        self.head = nn.Dense(HIDDEN, NUM_CLASSES)

    def construct(self, features):
        return self.head(self.dropout(self.hidden(features)))


class ClassifierWithRDropLoss(nn.Cell):
    """The R-Drop training network of the docs: repeat the batch, run the backbone once, RDropLoss."""

    def __init__(self, backbone, alpha):
        super().__init__()
        self.backbone = backbone
        self.loss = RDropLoss()
        self.alpha = alpha

    def construct(self, features, label_ids):
        features, label_ids = rdrop_repeat(features, label_ids)
        return self.loss(self.backbone(features), label_ids, self.alpha)


class StepLosses(Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_step_end(self, run_context):
        self.losses.append(float(run_context.original_args().net_outputs.asnumpy()))


@pytest.fixture(scope="module")
def classification_task():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((SAMPLES, FEATURES)).astype(np.float32)
    teacher = rng.standard_normal((FEATURES, NUM_CLASSES))
    labels = np.argmax(features @ teacher, axis=1).astype(np.int32)
    return features, labels


def cross_entropy_in_eval_mode(backbone, features, labels):
    backbone.set_train(False)
    return float(nn.CrossEntropyLoss()(backbone(Tensor(features)), Tensor(labels)))


@pytest.fixture(scope="module")
def rdrop_run(classification_task):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(5)
    features, labels = classification_task
    backbone = Classifier()
    start_cross_entropy = cross_entropy_in_eval_mode(backbone, features, labels)
    net_with_loss = ClassifierWithRDropLoss(backbone, ALPHA)
    model = Model(net_with_loss, optimizer=nn.Adam(net_with_loss.trainable_params(), learning_rate=2e-2))
    dataset = NumpySlicesDataset({"features": features, "label_ids": labels}, shuffle=True).batch(BATCH)
    step_losses = StepLosses()
    model.train(EPOCHS, dataset, callbacks=[step_losses], dataset_sink_mode=False)
    steps_per_epoch = SAMPLES // BATCH
    return {"backbone": backbone, "net_with_loss": net_with_loss, "losses": step_losses.losses,
            "first_epoch": np.mean(step_losses.losses[:steps_per_epoch]),
            "last_epoch": np.mean(step_losses.losses[-steps_per_epoch:]),
            "start_cross_entropy": start_cross_entropy,
            "end_cross_entropy": cross_entropy_in_eval_mode(backbone, features, labels)}


def test_rdrop_training_lowers_the_loss_in_graph_mode(rdrop_run):
    assert len(rdrop_run["losses"]) == EPOCHS * SAMPLES // BATCH
    assert np.all(np.isfinite(rdrop_run["losses"]))
    # Measured over four seeds: the R-Drop loss (epoch means) falls to 0.41-0.47 of its first-epoch value and
    # the eval-mode cross-entropy to 0.14-0.16 of its start.
    assert rdrop_run["last_epoch"] < 0.6 * rdrop_run["first_epoch"], rdrop_run
    assert rdrop_run["end_cross_entropy"] < 0.3 * rdrop_run["start_cross_entropy"], rdrop_run


def test_consistency_term_needs_dropout_in_training_mode(rdrop_run, classification_task):
    features, labels = classification_task
    batch = (Tensor(features[:BATCH]), Tensor(labels[:BATCH]))
    net_with_loss = rdrop_run["net_with_loss"]
    plain = nn.CrossEntropyLoss()

    net_with_loss.set_train(False)
    rdrop_eval = float(net_with_loss(*batch))
    logits = rdrop_run["backbone"](batch[0])
    np.testing.assert_allclose(rdrop_eval, float(plain(logits, batch[1])), rtol=1e-6)

    net_with_loss.set_train(True)
    repeated_features, repeated_labels = rdrop_repeat(*batch)
    repeated_logits = rdrop_run["backbone"](repeated_features).asnumpy()
    # Dropout draws a different mask for each copy, so the two rows of a pair differ and the KL term is positive.
    assert not np.allclose(repeated_logits[0::2], repeated_logits[1::2])
    kl_part = reference_loss(repeated_logits, repeated_labels.asnumpy(), ALPHA) \
        - reference_loss(repeated_logits, repeated_labels.asnumpy(), 0)
    assert kl_part > 1e-3
