"""Training loop and accuracy evaluation on tiny hand-made data."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlrp.errors import ExplanationError
from jaxlrp.models.vgg import VGG
from jaxlrp.training import evaluate_accuracy, predict, train


@dataclass
class Tiny:
    images: np.ndarray
    labels: np.ndarray


def _tiny(n=64, seed=0):
    """Two classes told apart by the brightness of the left vs the right half."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 3), dtype=np.float32) * 0.3
    y = (np.arange(n) % 2).astype(np.int32)
    x[y == 0, :, :4] += 0.6
    x[y == 1, :, 4:] += 0.6
    return Tiny(x, y)


class Affine(nnx.Module):
    """A hand-set classifier: logit k is the mean of channel k (k < C)."""

    def __call__(self, x):
        return x.mean(axis=(1, 2))


def test_accuracy_on_hand_made_case():
    x = np.zeros((5, 2, 2, 3), np.float32)
    x[0, ..., 0] = 1  # predicted 0
    x[1, ..., 1] = 1  # predicted 1
    x[2, ..., 2] = 1  # predicted 2
    x[3, ..., 2] = 1  # predicted 2
    x[4, ..., 0] = 1  # predicted 0
    labels = np.array([0, 1, 2, 0, 1], np.int32)  # 3 of 5 right
    assert evaluate_accuracy(Affine(), Tiny(x, labels), batch_size=2) == pytest.approx(0.6)
    np.testing.assert_allclose(predict(Affine(), x, batch_size=3), x.mean(axis=(1, 2)))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_training_reduces_loss_and_updates_batch_stats(batch_norm):
    data = _tiny()
    model = VGG(num_classes=2, widths=(4,), batch_norm=batch_norm, dense=(8,), input_size=8,
                rngs=nnx.Rngs(0))
    before = evaluate_accuracy(model, data)
    mean0 = np.array(model.features[0].bn.mean[...]) if batch_norm else None
    model, hist = train(model, data, epochs=6, batch_size=16, lr=1e-2, progress=False,
                        eval_dataset=data)
    assert len(hist["loss"]) == 6 and hist["seconds"] > 0
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    after = evaluate_accuracy(model, data)
    assert after >= 0.95 and after >= before
    assert hist["eval_accuracy"][-1] == pytest.approx(after)
    if batch_norm:  # running statistics moved away from their initial (0, 1)
        assert np.abs(mean0).max() == 0
        assert np.abs(np.asarray(model.features[0].bn.mean[...])).max() > 1e-3
    # the model comes back in eval mode: two calls agree and do not change stats
    a, b = model(data.images[:4]), model(data.images[:4])
    np.testing.assert_array_equal(a, b)


def test_same_seed_same_result():
    data = _tiny(32)
    runs = []
    for _ in range(2):
        m = VGG(num_classes=2, widths=(4,), dense=(), input_size=8, rngs=nnx.Rngs(1))
        m, h = train(m, data, epochs=2, batch_size=8, seed=3, progress=False)
        runs.append((h["loss"], np.asarray(m.head.kernel[...])))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_bad_arguments():
    data = _tiny(16)
    model = VGG(num_classes=2, widths=(4,), dense=(), input_size=8, rngs=nnx.Rngs(0))
    with pytest.raises(ExplanationError, match="epochs"):
        train(model, data, epochs=0, progress=False)
    with pytest.raises(ExplanationError, match="batch_size"):
        train(model, data, epochs=1, batch_size=32, progress=False)
    with pytest.raises(ExplanationError, match="dataset"):
        train(model, object(), epochs=1, progress=False)
    with pytest.raises(ExplanationError, match="model"):
        train("vgg", data, epochs=1, progress=False)
    with pytest.raises(ExplanationError, match="labels must be integers"):
        evaluate_accuracy(model, Tiny(data.images, data.labels.astype(np.float32)))


def test_extra_loss_hook_adds_a_term_and_logs_it():
    data = _tiny(32)

    def fresh():
        return VGG(num_classes=2, widths=(4,), dense=(), input_size=8, rngs=nnx.Rngs(1))

    base, h0 = train(fresh(), data, epochs=2, batch_size=8, seed=3, progress=False)

    def constant(m, x, y, key):  # a constant term: same gradients, loss + 5
        return jnp.float32(5.0), {"five": jnp.float32(5.0), "u": jax.random.uniform(key)}

    same, h1 = train(fresh(), data, epochs=2, batch_size=8, seed=3, progress=False,
                     extra_loss=constant)
    np.testing.assert_allclose(h1["loss"], np.asarray(h0["loss"]) + 5.0, rtol=1e-6)
    assert h1["five"] == [5.0, 5.0]
    assert 0.0 < h1["u"][0] < 1.0 and h1["u"][0] != h1["u"][1]  # a fresh key per step
    np.testing.assert_allclose(np.asarray(same.head.kernel[...]),
                               np.asarray(base.head.kernel[...]), rtol=1e-6, atol=1e-7)

    def push_class_1(m, x, y, key):  # a term with a gradient: logit 1 up, logit 0 down
        out = m(x)
        return 10.0 * jnp.mean(out[:, 0] - out[:, 1])

    pushed, _ = train(fresh(), data, epochs=2, batch_size=8, seed=3, progress=False,
                      extra_loss=push_class_1)
    assert (np.argmax(predict(pushed, data.images), -1) == 1).mean() > (
        np.argmax(predict(base, data.images), -1) == 1).mean()
