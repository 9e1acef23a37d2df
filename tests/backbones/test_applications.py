"""The Keras Applications backbones: shapes, preprocessing, BatchNorm rules.

Every network is built once per input shape (64 px, seeded) and shared by
the tests; the distribution and freezing tests use MobileNetV3-Large, the
cheapest one with BatchNorm.
"""

from __future__ import annotations

import functools
import random
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfal.backbones import (ImagePreprocessing, application_body,
                            batchnorm_layers, build_backbone, registry)
from cfal.backbones.applications import APPLICATIONS
from cfal.backbones.sources import IMAGENET_WEIGHTS
from support.strategies import mirrored_strategy

NAMES = list(APPLICATIONS)
SIZE, BATCH, DIM = 64, 4, 8


def _some_slow(fast: set[str]) -> list:
  """NAMES, those outside `fast` marked slow (eager steps of the large
  networks take 5-15 s each on 2 cores; ConvNeXt's grouped convolutions
  go through XLA on CPU)."""
  return [name if name in fast else pytest.param(name, marks=pytest.mark.slow)
          for name in NAMES]


# Each family's own `preprocess_input`, which takes 0-255 RGB images.
PREPROCESS_INPUT = {
    "resnet50": keras.applications.resnet50.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
    "efficientnetv2_b0": keras.applications.efficientnet_v2.preprocess_input,
    "efficientnetv2_s": keras.applications.efficientnet_v2.preprocess_input,
    "convnext_tiny": keras.applications.convnext.preprocess_input,
    "mobilenetv3_large": keras.applications.mobilenet_v3.preprocess_input,
}


@functools.lru_cache(maxsize=None)
def _model(name: str, channels: int = 3, size: int = SIZE,
           freeze_batchnorm: bool = False) -> keras.Model:
  options = {"freeze_batchnorm": True} if freeze_batchnorm else {}
  return build_backbone(name, input_shape=(size, size, channels),
                        embedding_dim=DIM, seed=0, **options)


def _images(channels: int, n: int = BATCH, size: int = SIZE,
            seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random((n, size, size, channels),
                                            dtype=np.float32)


def _batchnorm_state(model):
  return [(v.path, v.numpy()) for layer in batchnorm_layers(model)
          for v in (layer.moving_mean, layer.moving_variance)]


def _set_batchnorm_state(model, state):
  variables = [v for layer in batchnorm_layers(model)
               for v in (layer.moving_mean, layer.moving_variance)]
  for variable, (_, value) in zip(variables, state, strict=True):
    variable.assign(value)


@pytest.fixture(autouse=True, scope="module")
def _drop_models():
  yield
  _model.cache_clear()


# ---------------------------------------------------------------------------
# The registry.


def test_registry_declares_every_application_with_its_options():
  for name in NAMES:
    spec = registry.BACKBONES[name]
    assert spec.target == f"cfal.backbones.applications:build_{name}"
    expected = (("normalize",) if name == "convnext_tiny"
                else ("normalize", "freeze_batchnorm"))
    assert spec.option_names == expected
    assert "Keras Applications" in spec.summary
  assert set(IMAGENET_WEIGHTS) == set(NAMES)
  assert registry.check_backbone_options(
      "resnet50", {"freeze_batchnorm": "true"}) == {"freeze_batchnorm": True}
  with pytest.raises(ValueError, match="takes no freeze_batchnorm"):
    registry.check_backbone_options("convnext_tiny",
                                    {"freeze_batchnorm": "true"})


def test_declarations_load_without_tensorflow():
  code = ("import sys, cfal.backbones.registry, cfal.backbones.sources\n"
          "print(sorted(m for m in ('tensorflow', 'keras') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout.strip()
  assert out == "[]"


# ---------------------------------------------------------------------------
# Shapes, channels and one training step.


@pytest.mark.parametrize("name", NAMES)
def test_rgb_images_give_float32_embeddings(name):
  out = _model(name)(_images(3), training=False)
  assert tuple(out.shape) == (BATCH, DIM) and out.dtype == tf.float32
  assert np.all(np.isfinite(out.numpy()))


@pytest.mark.parametrize("name", _some_slow({"mobilenetv3_large",
                                             "resnet50"}))
def test_gray_images_are_their_rgb_repetition(name):
  gray = _images(1)
  rgb = np.repeat(gray, 3, axis=-1)
  out_gray = _model(name, channels=1)(gray, training=False)
  out_rgb = _model(name, channels=3)(rgb, training=False)
  for out in (out_gray, out_rgb):
    assert tuple(out.shape) == (BATCH, DIM) and out.dtype == tf.float32
    assert np.all(np.isfinite(out.numpy()))
  # Same seed, same weights: a gray image is its RGB repetition.
  np.testing.assert_array_equal(out_gray, out_rgb)


@pytest.mark.parametrize("name", _some_slow({"mobilenetv3_large", "resnet50",
                                             "efficientnetv2_b0"}))
def test_one_training_step_reaches_the_body_and_the_projection(name):
  model = _model(name)
  images = tf.constant(_images(3, seed=1))
  target = tf.constant(np.random.default_rng(2).normal(size=(BATCH, DIM)),
                       tf.float32)
  variables = model.trainable_variables
  statistics = _batchnorm_state(model)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(model(images, training=True) - target))
  grads = tape.gradient(loss, variables)
  assert all(g is not None for g in grads)
  by_path = dict(zip((v.path for v in variables), grads))
  first_conv = next(layer for layer in application_body(model).layers
                    if isinstance(layer, keras.layers.Conv2D))
  for path in ("embedding/kernel", first_conv.kernel.path):
    assert np.any(by_path[path].numpy() != 0), path
  before = [v.numpy() for v in variables]
  for variable, grad in zip(variables, grads):
    variable.assign_sub(0.01 * grad)
  moved = {v.path for v, b in zip(variables, before)
           if not np.array_equal(v.numpy(), b)}
  assert {"embedding/kernel", first_conv.kernel.path} <= moved
  for variable, value in zip(variables, before):
    variable.assign(value)
  _set_batchnorm_state(model, statistics)  # the shared model as it was


def test_bad_shapes_and_options_are_one_line_value_errors():
  for shape in ((31, 64, 3), (64, 31, 1), (64, 64, 2), (64, 64)):
    with pytest.raises(ValueError) as info:
      build_backbone("mobilenetv3_large", input_shape=shape, embedding_dim=4)
    assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="takes no freeze_batchnorm"):
    build_backbone("convnext_tiny", input_shape=(32, 32, 3), embedding_dim=4,
                   freeze_batchnorm=True)


def test_normalize_puts_embeddings_on_the_unit_sphere():
  model = build_backbone("mobilenetv3_large", input_shape=(32, 32, 3),
                         embedding_dim=5, seed=0, normalize=True)
  out = model(_images(3, size=32), training=False).numpy()
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_float32_embeddings_under_mixed_bfloat16():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = build_backbone("mobilenetv3_large", input_shape=(32, 32, 1),
                           embedding_dim=4, seed=0)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert application_body(model).compute_dtype == "bfloat16"
  for training in (False, True):
    out = model(_images(1, size=32), training=training)
    assert out.dtype == tf.float32 and np.all(np.isfinite(out.numpy()))


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
  python_state, numpy_state = random.getstate(), np.random.get_state()
  a, b = (build_backbone("mobilenetv3_large", input_shape=(32, 32, 3),
                         embedding_dim=DIM, seed=7) for _ in range(2))
  assert random.getstate() == python_state
  np.testing.assert_array_equal(np.random.get_state()[1], numpy_state[1])
  for wa, wb in zip(a.weights, b.weights, strict=True):
    np.testing.assert_array_equal(wa.numpy(), wb.numpy())
  other = _model("mobilenetv3_large")  # seed 0; weights do not depend on size
  for wa, wo in zip(a.weights, other.weights, strict=True):
    if "moving" not in wa.path and "gamma" not in wa.path and (
        "beta" not in wa.path and "bias" not in wa.path):
      assert not np.array_equal(wa.numpy(), wo.numpy()), wa.path


# ---------------------------------------------------------------------------
# Preprocessing: each family's own `preprocess_input` on 0-255 images.


@pytest.mark.parametrize("name", NAMES)
def test_preprocessing_is_the_familys_preprocess_input(name):
  images = _images(3, seed=3)
  mode = APPLICATIONS[name].preprocessing
  ours = ImagePreprocessing(mode)(images).numpy()
  theirs = np.asarray(PREPROCESS_INPUT[name](255.0 * images))
  if mode == "torch":  # Keras divides 255 x by 255 first: rounding only.
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
  else:
    np.testing.assert_array_equal(ours, theirs)
  gray = images[..., :1]
  np.testing.assert_array_equal(
      ImagePreprocessing(mode)(gray),
      ImagePreprocessing(mode)(np.repeat(gray, 3, axis=-1)))


@pytest.mark.parametrize("name", NAMES)
def test_features_are_the_applications_on_preprocessed_images(name):
  """The backbone's pooled features = the Keras application's own output
  on `preprocess_input(255 x)`, with its own input layers (the rescaling
  of include_preprocessing) in between."""
  model = _model(name)
  images = _images(3, seed=4)
  pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
  ours = pooled(images, training=False).numpy()
  body = application_body(model)
  preprocessed = PREPROCESS_INPUT[name](255.0 * images)
  # As the application was built: one input tensor, or a list of one.
  theirs = body([preprocessed] if isinstance(body.input, list)
                else preprocessed, training=False)
  theirs = np.mean(theirs.numpy(), axis=(1, 2))
  exact = APPLICATIONS[name].preprocessing != "torch"
  np.testing.assert_allclose(ours, theirs, rtol=1e-6 if exact else 1e-4,
                             atol=1e-6 if exact else 1e-4)


# ---------------------------------------------------------------------------
# BatchNorm: synchronized, and frozen on request.


@pytest.mark.parametrize("name", NAMES)
def test_every_batchnorm_is_synchronized(name):
  layers = batchnorm_layers(_model(name))
  if name == "convnext_tiny":
    assert not layers  # LayerNorm only
  else:
    assert layers
  for layer in layers:
    assert layer.synchronized and layer.get_config()["synchronized"]
    assert layer.trainable


def test_frozen_batchnorm_keeps_its_statistics_and_infers():
  frozen = _model("mobilenetv3_large", freeze_batchnorm=True)
  layers = batchnorm_layers(frozen)
  assert layers and all(not layer.trainable and layer.synchronized
                        for layer in layers)
  trainable = {v.path for v in frozen.trainable_variables}
  for layer in layers:
    assert layer.gamma.path not in trainable
    assert layer.beta.path not in trainable
  images = tf.constant(_images(3, seed=5))
  before = _batchnorm_state(frozen)
  with tf.GradientTape() as tape:
    out = frozen(images, training=True)
    loss = tf.reduce_sum(tf.square(out))
  grads = tape.gradient(loss, frozen.trainable_variables)
  for (path, old), (_, new) in zip(before, _batchnorm_state(frozen)):
    np.testing.assert_array_equal(old, new, err_msg=path)
  np.testing.assert_array_equal(out, frozen(images, training=False))
  # Gradients still pass through the frozen layers to the convolutions.
  assert all(g is not None for g in grads)
  first_conv = application_body(frozen).get_layer("conv")
  index = [v.path for v in frozen.trainable_variables].index(
      first_conv.kernel.path)
  assert np.any(grads[index].numpy() != 0)
  # The same network unfrozen: a training call moves the statistics.
  free = _model("mobilenetv3_large")
  before = _batchnorm_state(free)
  free(images, training=True)
  assert any(not np.array_equal(old, new) for (_, old), (_, new)
             in zip(before, _batchnorm_state(free)))
  _set_batchnorm_state(free, before)  # as it was, for the other tests


def _assert_close(got, want, paths, rtol=1e-10, atol=1e-12):
  """Each array within `rtol` times its own largest entry, plus `atol`:
  float64 sums taken in another order differ in their last bits relative
  to the array's scale, and gradients that are zero in exact arithmetic
  (a BatchNorm offset feeding another BatchNorm) come out as 1e-14 noise."""
  for path, have, expected in zip(paths, got, want, strict=True):
    scale = float(np.max(np.abs(expected)))
    assert np.max(np.abs(have - expected)) <= rtol * scale + atol, path


def test_mirrored_batchnorm_gives_one_devices_gradients_in_float64():
  """Two replicas of 2 images each vs one device with all 4, in float64:
  synchronized BatchNorm normalises with the global batch's moments, so the
  summed gradients and the new moving statistics agree to rounding.
  Unsynchronized replicas (each normalising its own 2 images, as one
  device does with each half) would not."""
  n = 4
  images = _images(3, n=n, size=32, seed=6)
  target = np.random.default_rng(7).normal(size=(n, DIM))

  def build():
    return build_backbone("mobilenetv3_large", input_shape=(32, 32, 3),
                          embedding_dim=DIM, seed=1)

  keras.mixed_precision.set_global_policy("float64")
  try:
    single = build()
    strategy = mirrored_strategy(2)
    with strategy.scope():
      mirrored = build()
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert single.output.dtype == "float64"
  paths = [v.path for v in single.trainable_variables]

  def grads(model, x, y):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(model(x, training=True) - y)) / n
    return tape.gradient(loss, model.trainable_variables)

  dataset = tf.data.Dataset.from_tensor_slices((images, target)).batch(n)
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
  # Eagerly: tracing and optimising the two-replica graph takes ~30 s here,
  # the eager replicas (threads, the same all-reduces) ~8 s.
  per_replica = strategy.run(lambda x, y: grads(mirrored, x, y), args=batch)
  got = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None).numpy()
         for g in per_replica]
  assert {len(v.value.values) for v in mirrored.trainable_variables} == {2}
  expected = [g.numpy() for g in grads(single, images, target)]
  _assert_close(got, expected, paths)
  stats = _batchnorm_state(single)
  _assert_close([v for _, v in _batchnorm_state(mirrored)],
                [v for _, v in stats], [p for p, _ in stats])
  halves = [g.numpy() for g in grads(single, images[:2], target[:2])]
  halves = [a + b.numpy() for a, b in
            zip(halves, grads(single, images[2:], target[2:]))]
  assert max(np.max(np.abs(a - b)) for a, b in zip(halves, expected)) > 1e-6
