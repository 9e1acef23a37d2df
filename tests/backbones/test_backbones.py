"""Tests of cfal.backbones: shapes, dtypes, seeding, randomness, gradients."""

from __future__ import annotations

import random

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfal.backbones import BACKBONES, StochasticDepth, build_backbone

# The small from-scratch networks; the Keras Applications ones have their
# own tests (test_applications.py).
NAMES = ["cct", "notebook_cnn", "prelu_cnn", "resnet", "seed_cnn"]

# Small versions of the backbones that still have every kind of layer.
SMALL = {
    "seed_cnn": {},
    "notebook_cnn": {},
    "prelu_cnn": {},
    "resnet": {"width": 8, "depth_per_stage": (1, 1, 1, 1)},
    "cct": {},
}


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _build(name: str, shape=(28, 28, 1), dim: int = 8, seed=0, **options):
  return build_backbone(name, input_shape=shape, embedding_dim=dim,
                        seed=seed, **{**SMALL[name], **options})


@pytest.fixture
def mixed_bfloat16():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy("float32")


def _one_line_value_error(fn) -> str:
  with pytest.raises(ValueError) as info:
    fn()
  message = str(info.value)
  assert message and "\n" not in message
  return message


# ---------------------------------------------------------------------------
# Registry and argument checks.


def test_registry_names():
  assert set(BACKBONES) == {"seed_cnn", "notebook_cnn", "prelu_cnn",
                            "resnet", "cct",
                            "resnet50", "densenet121", "efficientnetv2_b0",
                            "efficientnetv2_s", "convnext_tiny",
                            "mobilenetv3_large"}


def test_unknown_name_lists_valid_names():
  message = _one_line_value_error(lambda: build_backbone(
      "vgg", input_shape=(28, 28, 1), embedding_dim=8))
  assert "vgg" in message
  for name in BACKBONES:
    assert name in message


@pytest.mark.parametrize("name,shape", [
    ("seed_cnn", (3, 3, 1)), ("prelu_cnn", (7, 7, 1)),
    ("notebook_cnn", (3, 3, 1)),
    ("resnet", (27, 27, 1)), ("resnet", (28, 16, 3)),
    ("cct", (16, 16, 3)), ("cct", (28, 28)), ("seed_cnn", (28, 28, 0)),
])
def test_bad_input_shape_is_one_line_value_error(name, shape):
  message = _one_line_value_error(lambda: _build(name, shape))
  assert name in message


@pytest.mark.parametrize("name", NAMES)
def test_bad_embedding_dim_is_one_line_value_error(name):
  _one_line_value_error(lambda: _build(name, dim=0))


def test_bad_options_are_one_line_value_errors():
  _one_line_value_error(lambda: _build("cct", num_heads=3))
  _one_line_value_error(lambda: _build("cct", dropout=1.0))
  _one_line_value_error(lambda: _build("resnet", depth_per_stage=()))
  _one_line_value_error(lambda: _build("resnet", depth_per_stage=(1, 0)))
  _one_line_value_error(lambda: _build("seed_cnn", pooling="max"))
  _one_line_value_error(lambda: _build("seed_cnn", seed="7"))


# ---------------------------------------------------------------------------
# Shapes and dtypes.


@pytest.mark.parametrize("name,shape", [
    *[(name, shape) for name in NAMES
      for shape in ((28, 28, 1), (32, 32, 3))],
    ("resnet", (64, 64, 3)),
])
def test_output_shape_and_dtype(name, shape):
  model = _build(name, shape, dim=5)
  out = model(_images(3, shape), training=False)
  assert tuple(out.shape) == (3, 5)
  assert out.dtype == tf.float32
  assert np.all(np.isfinite(out.numpy()))


@pytest.mark.parametrize("name", NAMES)
def test_default_options_build(name):
  model = build_backbone(name, input_shape=(28, 28, 1), embedding_dim=128)
  out = model(_images(2, (28, 28, 1)), training=False)
  assert tuple(out.shape) == (2, 128) and out.dtype == tf.float32


def test_resnet_stem_follows_input_size():
  small = _build("resnet", (63, 63, 3))
  large = _build("resnet", (64, 64, 3))
  assert "stem_pool" not in [layer.name for layer in small.layers]
  assert "stem_pool" in [layer.name for layer in large.layers]
  assert small.get_layer("stem_conv").kernel_size == (3, 3)
  assert large.get_layer("stem_conv").kernel_size == (7, 7)
  assert large.get_layer("stem_conv").strides == (2, 2)


def test_resnet_depth_and_width_options():
  model = _build("resnet", width=4, depth_per_stage=(1, 2, 1))
  blocks = {layer.name.rsplit("_", 1)[0] for layer in model.layers
            if layer.name.endswith("_add")}
  assert blocks == {"stage1_block1", "stage2_block1", "stage2_block2",
                    "stage3_block1"}
  assert model.get_layer("stage3_block1_conv2").filters == 16


def test_resnet_224_batch_of_one():
  shape = (224, 224, 3)
  model = _build("resnet", shape, dim=4, width=4)
  out = model(_images(1, shape), training=False)
  assert tuple(out.shape) == (1, 4) and out.dtype == tf.float32


@pytest.mark.parametrize("name", ["seed_cnn", "notebook_cnn"])
def test_embeddings_on_unit_sphere(name):
  images = _images(6, (28, 28, 1))
  out = _build(name, dim=3)(images, training=False).numpy()
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
  raw = _build(name, dim=3, normalize=False)(images, training=False)
  assert not np.allclose(np.linalg.norm(raw.numpy(), axis=1), 1.0, atol=1e-3)


def test_notebook_cnn_layers():
  # The notebook's network: four 3x3 convolutions of 10, 10, 20, 20
  # filters, two pools, Dense 50, the embedding; nothing else has weights.
  model = _build("notebook_cnn", dim=3)
  weighted = [(type(layer).__name__, layer.kernel.shape[-1])
              for layer in model.layers if getattr(layer, "kernel", None)
              is not None]
  assert weighted == [("Conv2D", 10), ("Conv2D", 10), ("Conv2D", 20),
                      ("Conv2D", 20), ("Dense", 50), ("Dense", 3)]
  assert not any("Normalization" in type(layer).__name__ and
                 type(layer).__name__ != "UnitNormalization"
                 for layer in model.layers)
  assert model.count_params() == (
      (9 * 1 * 10 + 10) + (9 * 10 * 10 + 10) + (9 * 10 * 20 + 20)
      + (9 * 20 * 20 + 20) + (7 * 7 * 20 * 50 + 50) + (50 * 3 + 3))


@pytest.mark.parametrize("name", NAMES)
def test_float32_output_under_mixed_bfloat16(name, mixed_bfloat16):
  del mixed_bfloat16
  model = _build(name)
  assert any(layer.compute_dtype == "bfloat16" for layer in model.layers)
  for training in (False, True):
    out = model(_images(2, (28, 28, 1)), training=training)
    assert out.dtype == tf.float32
    assert np.all(np.isfinite(out.numpy()))
  if name == "seed_cnn":
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0,
                               atol=1e-5)


def test_policy_restored_after_mixed_test():
  assert keras.mixed_precision.global_policy().name == "float32"


# ---------------------------------------------------------------------------
# Seeding.


def _weights(model: keras.Model) -> list[np.ndarray]:
  return [w.numpy() for w in model.weights]


@pytest.mark.parametrize("name", NAMES)
def test_seed_reproducible_and_distinct(name):
  images = _images(2, (28, 28, 1))
  a, b, c = (_build(name, seed=seed) for seed in (7, 7, 8))
  for wa, wb in zip(_weights(a), _weights(b), strict=True):
    np.testing.assert_array_equal(wa, wb)
  np.testing.assert_array_equal(a(images, training=False),
                                b(images, training=False))
  # Even the dropout / stochastic-depth draws repeat.
  np.testing.assert_array_equal(a(images, training=True),
                                b(images, training=True))
  assert any(not np.array_equal(wa, wc)
             for wa, wc in zip(_weights(a), _weights(c), strict=True))
  assert not np.allclose(a(images, training=False), c(images, training=False))


@pytest.mark.parametrize("name", NAMES)
def test_seeded_build_leaves_global_rng_alone(name):
  python_state, numpy_state = random.getstate(), np.random.get_state()
  _build(name, seed=1)
  assert random.getstate() == python_state
  after = np.random.get_state()
  assert after[0] == numpy_state[0] and after[2:] == numpy_state[2:]
  np.testing.assert_array_equal(after[1], numpy_state[1])


@pytest.mark.parametrize("name", ["resnet", "cct"])
def test_layers_of_one_model_differ(name):
  """Per-layer seeds: same-shaped kernels do not start equal."""
  model = _build(name, seed=3)
  kernels = {}
  for weight in model.trainable_weights:
    if weight.path.endswith("kernel"):
      kernels.setdefault(tuple(weight.shape), []).append(weight.numpy())
  pairs = [(a, b) for same in kernels.values()
           for i, a in enumerate(same) for b in same[i + 1:]]
  assert pairs
  for a, b in pairs:
    assert not np.array_equal(a, b)


def test_cct_query_key_value_start_different():
  model = _build("cct", seed=0)
  layer = model.get_layer("encoder1_attention")
  q, k, v = (d.kernel.numpy() for d in (layer.query, layer.key, layer.value))
  assert not np.array_equal(q, k) and not np.array_equal(k, v)


# ---------------------------------------------------------------------------
# CCT randomness and stochastic depth.


def test_cct_training_is_stochastic_inference_is_not():
  model = _build("cct")
  images = _images(4, (28, 28, 1))
  np.testing.assert_array_equal(model(images, training=False),
                                model(images, training=False))
  assert not np.allclose(model(images, training=True),
                         model(images, training=True))


def test_cct_stochastic_depth_rates_increase_linearly():
  model = _build("cct", num_layers=3, stochastic_depth=0.2)
  rates = [layer.rate for layer in model.layers
           if isinstance(layer, StochasticDepth)]
  # Layer 1 has rate 0 and gets no StochasticDepth; two branches per layer.
  np.testing.assert_allclose(rates, [0.1, 0.1, 0.2, 0.2])
  model = _build("cct", num_layers=1, dropout=0.0, stochastic_depth=0.0)
  assert not any(isinstance(layer, StochasticDepth) for layer in model.layers)
  images = _images(2, (28, 28, 1))
  np.testing.assert_array_equal(model(images, training=True),
                                model(images, training=False))


def test_stochastic_depth_keeps_expected_value():
  rate = 0.3
  layer = StochasticDepth(rate, seed=5)
  x = tf.fill([20000, 2, 3], 2.0)
  y = layer(x, training=True).numpy()
  per_example = y[:, 0, 0]
  # Whole examples are dropped or scaled by 1 / keep.
  np.testing.assert_array_equal(y, np.broadcast_to(per_example[:, None, None],
                                                   y.shape))
  kept = per_example != 0
  np.testing.assert_allclose(per_example[kept], 2.0 / (1 - rate), rtol=1e-6)
  assert abs(kept.mean() - (1 - rate)) < 0.02
  assert abs(y.mean() - 2.0) < 0.05
  # Many draws of a small batch: the mean converges to the input.
  small = tf.constant([[1.0, -2.0, 3.0]] * 4)
  draws = np.stack([layer(small, training=True).numpy()
                    for _ in range(200)])
  np.testing.assert_allclose(draws.mean(axis=(0, 1)), [1.0, -2.0, 3.0],
                             atol=0.3)
  assert len({draw.tobytes() for draw in draws[:10]}) > 1
  np.testing.assert_array_equal(layer(x, training=False), x)
  np.testing.assert_array_equal(layer(x), x)


def test_stochastic_depth_rejects_bad_rate():
  for rate in (-0.1, 1.0):
    with pytest.raises(ValueError):
      StochasticDepth(rate)


# ---------------------------------------------------------------------------
# Gradients reach every variable and training reduces the loss.


def _toy_batch(num_classes: int = 4, n: int = 16):
  """`n` 28x28 images: a class-specific stroke pattern at a random place."""
  rng = np.random.default_rng(1)
  labels = np.arange(n) % num_classes
  images = 0.2 * rng.random((n, 28, 28, 1), dtype=np.float32)
  patterns = np.zeros((num_classes, 12, 12), np.float32)
  patterns[0, 5:7, :] = 1.0                       # horizontal bar
  patterns[1, :, 5:7] = 1.0                       # vertical bar
  patterns[2, np.arange(12), np.arange(12)] = 1.0  # diagonal
  patterns[3, 2:10, 2:10] = 1.0                   # hollow square
  patterns[3, 4:8, 4:8] = 0.0
  for image, label in zip(images, labels):
    row, col = rng.integers(0, 17, size=2)
    image[row:row + 12, col:col + 12, 0] += 0.8 * patterns[label]
  return tf.constant(images), tf.constant(labels)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_variable_and_reduce_loss(name):
  """20 Adam steps of backbone + an inline linear softmax on a fixed batch.

  Adam is written out: a Keras optimizer takes seconds to trace or to step
  eagerly, more than the whole test otherwise.
  """
  num_classes, dim, learning_rate = 4, 16, 1e-3
  images, labels = _toy_batch(num_classes)
  model = _build(name, dim=dim, seed=2)
  # A random classifier, so the backbone's gradients are nonzero from the
  # first step.
  weights = tf.Variable(tf.random.stateless_normal(
      [dim, num_classes], seed=[0, 1], stddev=dim ** -0.5))
  bias = tf.Variable(tf.zeros([num_classes]))
  variables = [*model.trainable_variables, weights, bias]
  moments = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v)))
             for v in variables]
  count = tf.Variable(0.0)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      logits = model(images, training=True) @ weights + bias
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=labels, logits=logits))
    grads = tape.gradient(loss, variables)
    count.assign_add(1.0)
    rate = (learning_rate * tf.sqrt(1.0 - 0.999 ** count)
            / (1.0 - 0.9 ** count))
    for variable, grad, (m, v) in zip(variables, grads, moments):
      m.assign(0.9 * m + 0.1 * grad)
      v.assign(0.999 * v + 0.001 * tf.square(grad))
      variable.assign_sub(rate * m / (tf.sqrt(v) + 1e-7))
    return loss, grads

  loss, grads = step()
  for variable, grad in zip(variables, grads, strict=True):
    label = getattr(variable, "path", variable.name)
    assert grad is not None, f"no gradient for {label}"
    assert np.any(grad.numpy() != 0), f"zero gradient for {label}"
  losses = [float(loss)] + [float(step()[0]) for _ in range(19)]
  # seed_cnn's unit-norm embeddings bound its logits by the classifier's
  # norm, so its loss flattens out near 0.45 of the start.
  assert losses[-1] < 0.6 * losses[0], losses
