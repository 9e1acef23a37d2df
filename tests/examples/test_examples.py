"""Runs the examples of embedding a head in a user's own training loop."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import cfal.data
import cfal.heads
from support.strategies import mirrored_strategy

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ["custom_loop.py", "keras_train_step.py"]
_STEP = re.compile(r"^step (\d+) loss ([-+.\deE]+) accuracy ([.\d]+)$", re.M)
_TEST = re.compile(r"^test accuracy ([.\d]+)$", re.M)


def _have_fashion_mnist() -> bool:
  try:
    cfal.data.load_fashion_mnist("test")
  except cfal.data.DataError:
    return False
  return True

needs_data = pytest.mark.skipif(
    not _have_fashion_mnist(),
    reason="no Fashion-MNIST (apt-get install dataset-fashion-mnist)")


@needs_data
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_trains(example):
  proc = subprocess.run(
      [sys.executable, f"examples/{example}", "--steps", "30",
       "--batch_size", "64"],
      cwd=ROOT, capture_output=True, text=True, timeout=180,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  steps = _STEP.findall(proc.stdout)
  assert len(steps) == 10 and steps[-1][0] == "30", proc.stdout
  losses = [float(loss) for _, loss, _ in steps]
  assert all(np.isfinite(losses)), proc.stdout
  # The center-loss default starts at ~2.3 (ln 10) and reaches 0.7-1.5 after
  # 30 steps (custom_loop prints batch losses, keras_train_step running means).
  assert losses[-1] < 0.85 * losses[0], proc.stdout
  test_accuracy = float(_TEST.search(proc.stdout).group(1))
  # Chance is 0.1; seeds 0-5 give 0.55-0.72 after 30 steps of batch 64.
  assert test_accuracy > 0.4, proc.stdout


def _load_example(name: str):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "examples" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_keras_train_step_under_strategy():
  """Under a strategy Keras builds the optimizer before the first step, from
  `model.trainable_variables`, which lack the head's tf.Module variables;
  HeadModel.compile builds it with them, or apply_gradients would fail with
  "Unknown variable"."""
  example = _load_example("keras_train_step")
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8)
  y = rng.integers(0, 10, 64).astype(np.int32)
  with mirrored_strategy(2).scope():
    head = cfal.heads.Softmax(num_classes=10,
                              embedding_dim=example.EMBEDDING_DIM)
    model = example.HeadModel(example.make_backbone(), head)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = head.prototypes.numpy().copy()
  assert not any(v is head.prototypes for v in model.trainable_variables)
  history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
  assert np.all(np.isfinite(history.history["loss"]))
  assert not np.allclose(head.prototypes.numpy(), before)  # head trained


_ROW = re.compile(r"^\| (\S.*?) \| ([-.\d]+) -> ([-.\d]+) \| ([.\d]+) \| "
                  r"([.\d]+) \| ([.\d]+) \| ([.\d]+) \| ([.\d]+) \| \d+ \|$",
                  re.M)


@needs_data
def test_compare_heads_scores_the_long_tail_variants():
  """The quick comparison trains the heads it names and scores the post-hoc
  logit adjustment of the same softmax network."""
  proc = subprocess.run(
      [sys.executable, "examples/compare_heads.py", "--steps", "30",
       "--heads", "softmax,ldam_drw,subcenter_arcface"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {m[0]: [float(v) for v in m[1:]] for m in _ROW.findall(proc.stdout)}
  assert list(rows) == ["softmax", "softmax + post-hoc LA", "ldam_drw",
                        "subcenter_arcface"], proc.stdout
  softmax, adjusted = rows["softmax"], rows["softmax + post-hoc LA"]
  # One network, two ways of predicting: the training losses are the same.
  assert softmax[:2] == adjusted[:2], proc.stdout
  # After 30 steps the plain softmax hardly ever predicts the rarest classes
  # (few-shot recall 0-0.05); subtracting log priors gives them 0.2-0.4.
  assert adjusted[6] > softmax[6] + 0.1, proc.stdout
  for label, values in rows.items():
    assert all(np.isfinite(values)), (label, proc.stdout)
    assert values[2] > 0.2, (label, proc.stdout)  # chance is 0.1
  assert "thirds of the classes by training count" in proc.stdout
