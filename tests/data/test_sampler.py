"""Class-aware sampling: class frequencies, uniform choice within a class,
and the stream's purity in (seed, step) across resumes and replicas.

Every image of the toy source carries its own index in its two pixels
(high and low byte), so a batch reads back as the examples it holds. The
expected class probabilities are written here from the papers' formulas,
not taken from `cfal.data.sampling`.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cfal.data import pipeline
from cfal.data.config import DataConfig, check_data_config

# A long tail with empty classes among them (2 and 8): training counts.
COUNTS = np.array([1000, 300, 0, 100, 30, 10, 3, 1, 0])
CLASSES = COUNTS.size
SCHEMES = ("class_balanced", "square_root", "progressive")
STEPS, BATCH = 2000, 64       # 128,000 independent draws per stream
Z = 4.5                       # how many standard deviations a count may miss


def _source_and_indices():
  """A source whose training subset has `COUNTS` per class; the source
  also holds examples outside it (every example of class 2 among them),
  which a sampler must never read."""
  held_out = np.array([40, 0, 25, 0, 0, 0, 0, 0, 0])
  labels = np.repeat(np.arange(CLASSES), COUNTS + held_out)
  rng = np.random.default_rng(0)
  order = rng.permutation(labels.size)     # classes interleaved in the source
  labels = labels[order]
  train = []
  for c in range(CLASSES):
    members = np.flatnonzero(labels == c)
    train.append(members[:COUNTS[c]])
  indices = np.sort(np.concatenate(train))
  num = labels.size
  images = np.stack([np.arange(num) // 256, np.arange(num) % 256],
                    axis=1).astype(np.uint8)[:, None, :]      # [N, 1, 2]
  source = pipeline.array_source(images, labels,
                                 tuple(f"c{i}" for i in range(CLASSES)))
  return source, indices


@pytest.fixture(name="data", scope="module")
def fixture_data():
  return _source_and_indices()


def read_indices(images: np.ndarray) -> np.ndarray:
  """The example index each unaugmented image carries."""
  pixels = np.rint(images[..., 0] * 255).astype(np.int64)   # [b, 1, 2]
  return pixels[:, 0, 0] * 256 + pixels[:, 0, 1]


def stream(data, sampler, *, steps, batch=BATCH, seed=7, start_step=0,
           total_steps=STEPS, augment="none", input_context=None):
  source, indices = data
  ds = pipeline.train_dataset(
      source, indices, global_batch_size=batch, seed=seed,
      start_step=start_step, augment=augment, sampler=sampler,
      total_steps=total_steps, input_context=input_context)
  return [(x.numpy(), y.numpy()) for x, y in ds.take(steps)]


def drawn(batches) -> tuple[np.ndarray, np.ndarray]:
  """[steps, batch] example indices and labels of a stream's batches."""
  return (np.stack([read_indices(x) for x, _ in batches]),
          np.stack([y for _, y in batches]))


def target(sampler: str, progress: np.ndarray | float = 0.0) -> np.ndarray:
  """The papers' class probabilities, float64; `progress` is t/T, one
  row per step for "progressive"."""
  n = COUNTS.astype(np.float64)
  present = (n > 0).astype(np.float64)
  if sampler == "class_balanced":          # p_c = 1/C over non-empty classes
    return present / present.sum()
  if sampler == "square_root":             # p_c ∝ n_c^(1/2), Kang et al.
    return np.sqrt(n) / np.sqrt(n).sum()
  share = np.minimum(np.atleast_1d(progress), 1.0)[:, None]
  return ((1 - share) * n / n.sum()
          + share * present / present.sum())   # Kang et al.'s progressive


def assert_counts_match(labels: np.ndarray, expected: np.ndarray) -> None:
  """Per-class binomial bound: |observed - K p| < Z sigma, and a class of
  probability 0 is never drawn. `expected` holds each draw's p, one row
  per step (the mean p over the draws bounds the variance from above)."""
  steps, batch = labels.shape
  draws = steps * batch
  p = expected.mean(axis=0) if expected.ndim == 2 else expected
  observed = np.bincount(labels.reshape(-1), minlength=CLASSES)
  for c in range(CLASSES):
    if p[c] == 0:
      assert observed[c] == 0, (c, observed)
      continue
    sigma = np.sqrt(draws * p[c] * (1 - p[c]))
    assert abs(observed[c] - draws * p[c]) < Z * sigma, (
        c, observed[c], draws * p[c], sigma)


@pytest.mark.parametrize("sampler", ["class_balanced", "square_root"])
def test_class_frequencies_match_the_scheme(data, sampler):
  source, indices = data
  examples, labels = drawn(stream(data, sampler, steps=STEPS))
  np.testing.assert_array_equal(labels, source.labels[examples])
  assert np.isin(examples, indices).all()   # training examples only
  assert_counts_match(labels, target(sampler))


def chi_square_bound(dof: int) -> float:
  """Z sigmas into the upper tail of chi-square with `dof` degrees of
  freedom (Wilson-Hilferty)."""
  h = 2.0 / (9.0 * dof)
  return dof * (1.0 - h + Z * np.sqrt(h)) ** 3


def test_within_a_class_every_example_is_equally_likely(data):
  source, indices = data
  examples, _ = drawn(stream(data, "class_balanced", steps=STEPS))
  examples = examples.reshape(-1)
  for c in np.flatnonzero(COUNTS):
    members = indices[source.labels[indices] == c]
    picked = examples[source.labels[examples] == c]
    hits = np.array([(picked == m).sum() for m in members])
    assert hits.sum() == picked.size        # nothing outside the class
    if members.size == 1:
      assert picked.size > 0 and (picked == members[0]).all()
      continue
    mean = picked.size / members.size
    chi2 = ((hits - mean) ** 2 / mean).sum()
    assert chi2 < chi_square_bound(members.size - 1), (c, chi2)


def test_progressive_moves_from_instance_to_class_balanced(data):
  examples, labels = drawn(stream(data, "progressive", steps=STEPS))
  del examples
  window = 250
  for first in (0, STEPS // 2 - window // 2, STEPS - window):
    steps = np.arange(first, first + window)
    assert_counts_match(labels[steps], target("progressive", steps / STEPS))
  # The schedule ends class-balanced and stays there past the run's end.
  _, after = drawn(stream(data, "progressive", steps=window,
                          start_step=STEPS + 100))
  assert_counts_match(after, target("class_balanced"))
  # The early window is far from balanced (the bound above has power).
  early = np.bincount(labels[:window].reshape(-1), minlength=CLASSES)
  assert early[0] > 0.5 * window * BATCH


@pytest.mark.parametrize("sampler", SCHEMES)
def test_a_resumed_stream_draws_the_same_batches(data, sampler):
  whole = stream(data, sampler, steps=9, batch=8, augment="flip")
  resumed = stream(data, sampler, steps=5, batch=8, start_step=4,
                   augment="flip")
  for (x, y), (rx, ry) in zip(whole[4:], resumed):
    np.testing.assert_array_equal(rx, x)
    np.testing.assert_array_equal(ry, y)
  other = stream(data, sampler, steps=9, batch=8, seed=8, augment="flip")
  assert not np.array_equal(np.stack([y for _, y in whole]),
                            np.stack([y for _, y in other]))


# One pipeline for 2 replicas, two for 4, one per replica; every scheme
# draws through the same global-batch call, progressive's schedule aside.
@pytest.mark.parametrize("sampler, replicas, pipelines", [
    ("class_balanced", 2, 1), ("square_root", 4, 2), ("progressive", 4, 4),
    ("progressive", 2, 1)])
def test_replica_batches_add_up_to_the_one_device_batch(data, sampler,
                                                        replicas, pipelines):
  batch, steps = 16, 3
  whole = stream(data, sampler, steps=steps, batch=batch, augment="flip")
  local = replicas // pipelines
  per_pipeline = []
  for pipeline_id in range(pipelines):
    context = tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=pipeline_id,
        num_replicas_in_sync=replicas)
    per_pipeline.append(stream(data, sampler, steps=steps * local,
                               batch=batch, augment="flip",
                               input_context=context))
  for step, (x, y) in enumerate(whole):
    parts = [p for batches in per_pipeline
             for p in batches[step * local:(step + 1) * local]]
    assert len(parts) == replicas
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)


def test_instance_is_the_per_epoch_shuffle_unchanged(data):
  source, indices = data
  batch, seed = 32, 3
  default = pipeline.train_dataset(source, indices, global_batch_size=batch,
                                   seed=seed, augment="flip")
  named = pipeline.train_dataset(source, indices, global_batch_size=batch,
                                 seed=seed, augment="flip",
                                 sampler="instance", total_steps=10)
  for (x, y), (nx, ny) in zip(default.take(60), named.take(60)):
    np.testing.assert_array_equal(nx.numpy(), x.numpy())
    np.testing.assert_array_equal(ny.numpy(), y.numpy())
  # And that order is the stateless permutation of each epoch.
  plain = stream(data, "instance", steps=60, batch=batch, seed=seed)
  order = drawn(plain)[0].reshape(-1)
  per_epoch = (indices.size // batch) * batch
  positions = np.arange(order.size)
  want = tf.random.experimental.index_shuffle(
      positions % per_epoch, seed=[seed, 0], max_index=indices.size - 1)
  first_epoch = positions < per_epoch
  np.testing.assert_array_equal(order[first_epoch],
                                indices[want.numpy()[first_epoch]])


def test_bad_settings_are_refused(data):
  source, indices = data
  with pytest.raises(ValueError, match="sampler"):
    pipeline.train_dataset(source, indices, global_batch_size=8, seed=0,
                           sampler="oversample")
  with pytest.raises(ValueError, match="total_steps"):
    pipeline.train_dataset(source, indices, global_batch_size=8, seed=0,
                           sampler="progressive")
  empty = indices[source.labels[indices] == 2]       # class 2: none
  assert empty.size == 0
  with pytest.raises(ValueError, match="every class is empty"):
    pipeline.train_dataset(source, empty, global_batch_size=8, seed=0,
                           sampler="class_balanced")
  with pytest.raises(ValueError) as error:
    check_data_config(DataConfig(sampler="bogus"))
  assert str(error.value) == (
      "Unknown --sampler='bogus'; choose one of instance, class_balanced, "
      "square_root, progressive.")
  for name in ("instance",) + SCHEMES:
    check_data_config(DataConfig(sampler=name))
