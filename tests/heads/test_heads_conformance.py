"""Every registered head, run the same ways: eager, tf.function, XLA, under a
MirroredStrategy, through a checkpoint, and in reduced precision."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfal.heads as heads
from cfal.heads import registry
from support.strategies import mirrored_strategy
from support.head_cases import CASES, EMBEDDING_DIM, NUM_CLASSES, make_head

ALL_CASES = sorted(CASES)
BATCH = 16


def _batch(seed: int = 0, n: int = BATCH):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, EMBEDDING_DIM)).astype(np.float32)
  y = (np.arange(n) % NUM_CLASSES).astype(np.int32)
  rng.shuffle(y)
  return tf.constant(x), tf.constant(y)


def _loss_and_grads(head, x, y):
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = head.loss(x, y)
  grads = tape.gradient(loss, [x] + list(head.trainable_variables))
  return loss, grads, head(x), head(x, y, training=True), head.predict(x)


def test_registry_covers_every_head():
  covered = {cls for cls, _ in CASES.values()}
  assert set(heads.HEADS.values()) <= covered


@pytest.mark.parametrize("case", ALL_CASES)
def test_variables_exist_after_init(case):
  head = make_head(case)
  assert head.variables, "variables must be created in __init__"
  assert isinstance(head.prototypes, tf.Variable)
  assert head.prototypes.shape[0] == NUM_CLASSES
  assert head.prototypes.shape[-1] == EMBEDDING_DIM
  # Assignable: users and plots read and set the prototypes.
  head.prototypes.assign(tf.ones_like(head.prototypes))
  np.testing.assert_array_equal(head.prototypes.numpy(), 1.0)


@pytest.mark.parametrize("case", ALL_CASES)
def test_eager_function_xla_agree(case):
  head = make_head(case)
  x, y = _batch()
  eager = _loss_and_grads(head, x, y)
  graph = tf.function(_loss_and_grads)(head, x, y)
  xla = tf.function(_loss_and_grads, jit_compile=True)(head, x, y)
  for other in (graph, xla):
    loss, grads, scores, train_scores, pred = other
    np.testing.assert_allclose(loss, eager[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, eager[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(train_scores, eager[3], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pred, eager[4])
    for got, want in zip(grads, eager[1]):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert eager[0].dtype == tf.float32 and eager[0].shape == [BATCH]
  assert eager[4].dtype == tf.int32


@pytest.mark.parametrize("case", ["center_loss", "center_loss_gradient"])
def test_update_eager_function_xla_agree(case):
  x, y = _batch(1)
  results = []
  for wrap in (lambda f: f, tf.function,
               lambda f: tf.function(f, jit_compile=True)):
    head = make_head(case)
    head.prototypes.assign(tf.random.stateless_normal(
        head.prototypes.shape, seed=[1, 2]))
    before = head.prototypes.numpy()
    wrap(head.update)(x, y)
    results.append(head.prototypes.numpy())
  for r in results[1:]:
    np.testing.assert_allclose(r, results[0], rtol=1e-6, atol=1e-6)
  moved = not np.allclose(results[0], before)
  assert moved == (case == "center_loss")


@pytest.mark.parametrize("case", ALL_CASES)
def test_checkpoint_round_trip(case, tmp_path):
  head = make_head(case, seed=1)
  x, y = _batch(2)
  path = tf.train.Checkpoint(head=head).write(str(tmp_path / "ckpt"))
  other = make_head(case, seed=2)
  assert not np.allclose(other.loss(x, y), head.loss(x, y))
  tf.train.Checkpoint(head=other).read(path).assert_consumed()
  np.testing.assert_array_equal(other.loss(x, y), head.loss(x, y))
  np.testing.assert_array_equal(other.prototypes, head.prototypes)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
@pytest.mark.parametrize("case", ALL_CASES)
def test_reduced_precision_embeddings(case, dtype):
  head = make_head(case)
  x, y = _batch(3)
  low = tf.cast(x, dtype)
  with tf.GradientTape() as tape:
    tape.watch(low)
    loss = head.loss(low, y)
  grad = tape.gradient(loss, low)
  assert loss.dtype == tf.float32
  assert head(low).dtype == tf.float32
  assert grad.dtype == dtype
  assert np.all(np.isfinite(grad.numpy().astype(np.float32)))
  # Same numbers as float32 math on the rounded embeddings.
  want = head.loss(tf.cast(low, tf.float32), y)
  np.testing.assert_allclose(loss, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Distribution.


@pytest.mark.parametrize("replicas", [2, 4])
def test_center_update_under_strategy_matches_one_device(replicas):
  """Per-class sums and counts are all-reduced before the alpha rule."""
  x, y = _batch(4, n=24)
  y = tf.constant(np.array([0, 0, 0, 1, 1, 2] * 4, np.int32))  # 3, 4 absent

  single = make_head("center_loss")
  single.prototypes.assign(tf.random.stateless_normal([5, 8], seed=[3, 4]))
  start = single.prototypes.numpy()
  single.update(x, y)

  strategy = mirrored_strategy(replicas)
  with strategy.scope():
    head = make_head("center_loss")
    head.prototypes.assign(start)
  shard = 24 // replicas

  def inputs(ctx):
    i = ctx.replica_id_in_sync_group
    return x[i * shard:(i + 1) * shard], y[i * shard:(i + 1) * shard]

  values = strategy.experimental_distribute_values_from_function(inputs)
  tf.function(lambda v: strategy.run(head.update, args=v))(values)
  for local in strategy.experimental_local_results(head.prototypes):
    np.testing.assert_allclose(local, single.prototypes, rtol=0, atol=1e-6)
  assert not np.allclose(single.prototypes, start)
  # Classes absent from the batch keep their centers.
  np.testing.assert_array_equal(single.prototypes.numpy()[3:], start[3:])


class _TinyNet(tf.Module):
  """A one-layer embedding network made of plain variables."""

  def __init__(self, in_dim: int, seed: int):
    super().__init__()
    self.kernel = tf.Variable(tf.random.stateless_normal(
        [in_dim, EMBEDDING_DIM], seed=[seed, 0], stddev=0.5))
    self.bias = tf.Variable(tf.zeros([EMBEDDING_DIM]))

  def __call__(self, x):
    return tf.tanh(x @ self.kernel + self.bias) * 3.0


def _train(strategy, case: str, steps: int = 4, jit: bool = False):
  global_batch = 16
  rng = np.random.default_rng(7)
  features = rng.normal(size=(global_batch * steps, 6)).astype(np.float32)
  labels = (np.arange(global_batch * steps) % NUM_CLASSES).astype(np.int32)
  with strategy.scope():
    net = _TinyNet(6, seed=5)
    head = make_head(case, seed=6)
    variables = list(net.trainable_variables) + list(head.trainable_variables)
    optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    optimizer.build(variables)

  def grads_fn(x, y):
    with tf.GradientTape() as tape:
      emb = net(x)
      loss = tf.nn.compute_average_loss(head.loss(emb, y),
                                        global_batch_size=global_batch)
    return emb, tape.gradient(loss, variables)

  compute = tf.function(grads_fn, jit_compile=True) if jit else grads_fn

  def replica_step(x, y):
    emb, grads = compute(x, y)
    optimizer.apply_gradients(zip(grads, variables))
    head.update(emb, y)

  @tf.function
  def train_step(batch):
    strategy.run(replica_step, args=batch)

  dataset = tf.data.Dataset.from_tensor_slices((features, labels))
  for batch in strategy.experimental_distribute_dataset(
      dataset.batch(global_batch)):
    train_step(batch)
  return [v.numpy() for v in variables + [head.prototypes]]


@pytest.mark.parametrize("case", ALL_CASES)
def test_two_replica_training_matches_one_device(case):
  single = _train(tf.distribute.get_strategy(), case)
  mirrored = _train(mirrored_strategy(2), case)
  for got, want in zip(mirrored, single):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("case", ["center_loss", "cfal_3c"])
def test_xla_gradients_under_strategy_match(case):
  """The per-replica gradient computation jit-compiled under a strategy."""
  plain = _train(mirrored_strategy(2), case, steps=2)
  xla = _train(mirrored_strategy(2), case, steps=2, jit=True)
  for got, want in zip(xla, plain):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


# ---------------------------------------------------------------------------
# Declarations: the registry and the constructors agree.

# Constructor keywords that are not user options: sizes and identity, the
# data's class counts, and the part objects (the registry's generic options
# reach them through `build_head`). Focal's `alpha` is the paper's name for
# `class_weights` (and `alpha` means the center-loss rate on the command
# line).
_NOT_OPTIONS = {"self", "num_classes", "embedding_dim", "seed", "name",
                "class_counts", "class_weights", "focal", "regularizers"}
_ALIASES = {"focal": {"alpha"}}


@pytest.mark.parametrize("name", sorted(registry.HEADS))
def test_constructor_keywords_are_declared_and_defaults_valid(name):
  spec = registry.HEADS[name]
  cls = spec.load()
  assert issubclass(cls, heads.Head) and heads.HEADS[name] is cls
  parameters = inspect.signature(cls.__init__).parameters
  own = set(parameters) - _NOT_OPTIONS - _ALIASES.get(name, set())
  undeclared = own - set(spec.option_names)
  assert not undeclared, f"{name} does not declare {sorted(undeclared)}"
  for key in own:
    default = parameters[key].default
    assert default is not inspect.Parameter.empty, f"{name}.{key}"
    assert spec.option(key).check(default) == default, (name, key)
  # Every part keyword is accepted (Focal and CFAL make their own focal).
  for key in ("class_weights", "regularizers"):
    assert key in parameters, (name, key)
  assert ("focal" in parameters) == (name not in ("focal", "cfal"))
  # Every generic option is declared, so build_head can map it.
  assert set(registry.GENERIC_NAMES) <= set(spec.option_names)


@pytest.mark.parametrize("name", sorted(registry.HEADS))
def test_declared_ranges_are_the_constructor_checks(name):
  """A value just outside each declared range is refused by the class
  itself, with a one-line message naming the option."""
  spec = registry.HEADS[name]
  cls = spec.load()
  parameters = inspect.signature(cls.__init__).parameters
  for option in spec.options:
    if option.name not in parameters or option.name in _NOT_OPTIONS:
      continue
    if option.choices:
      bad = "nope"
    elif option.low is not None:
      bad = option.low if option.low_open else option.low - 0.5
    elif option.high is not None:
      bad = option.high if option.high_open else option.high + 0.5
    else:
      continue
    with pytest.raises(ValueError) as error:
      cls(num_classes=NUM_CLASSES, embedding_dim=EMBEDDING_DIM,
          **{option.name: bad})
    assert f"`{option.name}`" in str(error.value), (name, option.name)
    assert "\n" not in str(error.value)


def test_normalized_embeddings_says_what_the_backbone_must_give():
  normalized = {name for name, cls in heads.HEADS.items()
                if cls.normalized_embeddings}
  assert normalized == {"arcface", "subcenter_arcface", "cosface",
                        "sphereface", "combined_margin", "ldam"}
  for name, cls in heads.HEADS.items():
    assert cls.normalized_embeddings == issubclass(cls, heads.CombinedMargin)
    assert isinstance(cls.normalized_embeddings, bool), name


# ---------------------------------------------------------------------------
# Construction errors and the library's independence from flags.


@pytest.mark.parametrize("cls, kwargs, fragment", [
    (heads.ArcFace, {"margin": 3.2}, "`margin`"),
    (heads.CosFace, {"margin": -0.1}, "`margin`"),
    (heads.SphereFace, {"margin": 0.5}, "`margin`"),
    (heads.Affinity, {"sigma": 0.0}, "`sigma`"),
    (heads.CFAL, {"beta": 1.0}, "`beta`"),
    (heads.CFAL, {"class_counts": [3, 0, 2, 1, 1]}, "`class_counts`"),
    (heads.CFAL, {"class_counts": [3, 2]}, "`class_counts`"),
    (heads.Focal, {"gamma": -1.0}, "`gamma`"),
    (heads.Focal, {"alpha": [1.0] * 5, "class_counts": [1] * 5}, "`alpha`"),
    (heads.CenterLoss, {"center_update": "ema"}, "`center_update`"),
    (heads.CenterLoss, {"alpha": 1.5}, "`alpha`"),
    (heads.Affinity, {"num_centers": 0}, "`num_centers`"),
    (heads.SubCenterArcFace, {"num_subcenters": 0}, "`num_subcenters`"),
    (heads.SubCenterArcFace, {"margin": 3.2}, "`margin`"),
])
def test_bad_arguments_name_the_argument(cls, kwargs, fragment):
  with pytest.raises(ValueError) as error:
    cls(num_classes=NUM_CLASSES, embedding_dim=EMBEDDING_DIM, **kwargs)
  message = str(error.value)
  assert fragment in message and "\n" not in message


def test_num_classes_must_be_at_least_two():
  with pytest.raises(ValueError, match="`num_classes`"):
    heads.Softmax(num_classes=1, embedding_dim=4)
