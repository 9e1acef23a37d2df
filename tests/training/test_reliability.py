"""Crash safety: kills at chosen points, signals, the run lock, full disks.

Every run here is real training on real Fashion-MNIST. A run is killed
with SIGKILL at one point (tests/support/fault_driver.py), rerun with the same
configuration, and must end bit-identical to an uninterrupted run, with the
same validation metrics, under `deterministic=True`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from cfal.training.runner import train
from support.training import (ROOT, assert_same_run, checkpoint_weights,
                              deterministic_config, kill_and_resume,
                              run_driver, small_config, straight_run)

def test_determinism_ends_with_the_run(tmp_path):
  """Op determinism is process-wide in TensorFlow; left on, it broke a
  later XLA run in the same process (no deterministic XLA MaxPool
  gradient). A run now restores the setting it found."""
  from tensorflow.python.framework import config as tf_config  # pylint: disable=import-outside-toplevel
  train(deterministic_config(tmp_path / "det", train_steps=2,
                             eval_every=2), echo=lambda _: None)
  assert not tf_config.is_op_determinism_enabled()
  result = train(small_config(tmp_path / "xla", train_steps=2,
                              steps_per_loop=2, step_mode="xla"),
                 echo=lambda _: None)
  assert result.step == 2


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run every interrupted one must equal."""
  return straight_run(deterministic_config(
      tmp_path_factory.mktemp("straight") / "run"))


KILL_POINTS = [
    "step:4",             # mid-way through steps 15-20
    "checkpoint-data:2",  # ckpt-15's shards written, not yet merged
    "checkpoint-state:3", # best/ckpt-15 written, its state file not
    "eval:2",             # the final validation, after ckpt-30
    "export-save:1",      # the SavedModel written, not yet moved into place
    pytest.param("best:1", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_run_resumes_bit_identical(point, straight, tmp_path):
  result = kill_and_resume(deterministic_config(tmp_path / "run"), point)
  assert not list((tmp_path / "run" / "checkpoints").glob("*_temp*"))
  assert_same_run(tmp_path / "run", result, straight)


@pytest.mark.slow
def test_kill_between_the_export_renames_loses_no_model(straight, tmp_path):
  config = deterministic_config(tmp_path / "run")
  train(config, echo=lambda _: None)
  # Rerunning a finished run evaluates and exports again; kill its swap.
  killed = run_driver(config, "export-swap:1")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert not (tmp_path / "run" / "export").exists()
  assert (tmp_path / "run" / "export.old" / "saved_model.pb").exists()
  result = train(config, echo=lambda _: None)
  assert not (tmp_path / "run" / "export.old").exists()
  assert_same_run(tmp_path / "run", result, straight)


def test_nan_in_a_batch_stops_with_the_step_and_keeps_the_checkpoint(
    tmp_path, monkeypatch):
  from cfal.data import pipeline  # pylint: disable=import-outside-toplevel
  from cfal.errors import TrainingError  # pylint: disable=import-outside-toplevel
  real = pipeline.train_dataset

  def poisoned(*args, start_step=0, **kwargs):
    dataset = real(*args, start_step=start_step, **kwargs)

    def poison(position, batch):
      images, labels = batch
      bad = tf.equal(position + start_step, 12)   # the 13th step
      return tf.where(bad, images * np.nan, images), labels
    return dataset.enumerate().map(poison)
  monkeypatch.setattr(pipeline, "train_dataset", poisoned)

  config = deterministic_config(tmp_path / "run")
  with pytest.raises(TrainingError) as error:
    train(config, echo=lambda _: None)
  message = str(error.value)
  assert len(message.splitlines()) == 1
  assert message.startswith("step 13: non-finite images")
  assert "ckpt-10, is intact" in message
  assert "--skip_nonfinite_steps" in message
  latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
  assert latest.endswith("ckpt-10")
  for name, value in checkpoint_weights(tmp_path / "run").items():
    assert np.all(np.isfinite(value)), name

  # The same run may skip it instead; the skip is counted and reported.
  lines = []
  result = train(deterministic_config(tmp_path / "run",
                                      skip_nonfinite_steps=1),
                 echo=lines.append)
  assert result.step == 30
  assert any("skipped 1 non-finite step(s) before step 15" in line
             for line in lines), lines
  weights = checkpoint_weights(tmp_path / "run")
  assert all(np.all(np.isfinite(v)) for v in weights.values())
  skipped = [v for k, v in weights.items() if k.startswith("skipped_steps")]
  assert skipped == [1]


def test_a_diverging_learning_rate_is_named(tmp_path):
  from cfal.errors import TrainingError  # pylint: disable=import-outside-toplevel
  import dataclasses  # pylint: disable=import-outside-toplevel
  config = deterministic_config(tmp_path / "run", train_steps=20)
  config = dataclasses.replace(config, optimizer=dataclasses.replace(
      config.optimizer, name="sgd", learning_rate=1e12, schedule="constant"))
  with pytest.raises(TrainingError, match="learning_rate=1e\\+12") as error:
    train(config, echo=lambda _: None)
  assert "non-finite" in str(error.value)
  assert not (tmp_path / "run" / "checkpoints" / "checkpoint").exists()


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
  config = deterministic_config(tmp_path / "run")
  done = run_driver(config, "file-limit:1")   # writes fail after ckpt-10
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 1, done.stderr[-2000:]
  assert len(lines) == 1, lines
  assert lines[0].startswith("train.py: Could not write the checkpoint of "
                             "step 15")
  assert "(File too large); the previous checkpoint " in lines[0]
  assert "ckpt-10 is intact" in lines[0] and "Free space" in lines[0]
  checkpoints = tmp_path / "run" / "checkpoints"
  assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-10")
  assert not list(checkpoints.glob("ckpt-15*"))
  # The intact checkpoint resumes to the uninterrupted result.
  result = train(config, echo=lambda _: None)
  assert result.step == 30


def _start(logdir, *flags):
  return subprocess.Popen(
      [sys.executable, str(ROOT / "train.py"), f"--logdir={logdir}",
       "--train_steps=100000", "--steps_per_loop=5", "--batch_size=32",
       "--embedding_dim=16", "--validation_split=0.01", "--eval_every=100000",
       "--checkpoint_every=100000", *flags],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _wait_for_steps(process, deadline=300.0) -> int:
  """Reads progress lines until the run has taken steps; returns the step."""
  began = time.monotonic()
  for line in process.stdout:
    if line.startswith("step "):
      return int(line.split()[1].split("/")[0])
    assert time.monotonic() - began < deadline, "no progress"
  raise AssertionError(process.stderr.read()[-2000:])


def test_lock_signals_and_stale_locks(tmp_path):
  logdir = tmp_path / "run"
  first = _start(logdir)
  _wait_for_steps(first)
  second = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), f"--logdir={logdir}",
       "--train_steps=10", "--batch_size=32", "--embedding_dim=16",
       "--validation_split=0.01"], capture_output=True, text=True, cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), check=False)
  lines = second.stderr.strip().splitlines()
  assert second.returncode == 2 and len(lines) == 1, second.stderr[-2000:]
  assert f"is in use by cfal run pid {first.pid}" in lines[0]

  # SIGTERM: a checkpoint at the current step, one line, exit 128 + 15.
  first.send_signal(signal.SIGTERM)
  _, err = first.communicate(timeout=300)
  assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
  line, = err.strip().splitlines()
  assert line.startswith("train.py: SIGTERM: saved ") and "resume" in line
  step = int(line.split(" at step ")[1].split(";")[0])
  assert tf.train.latest_checkpoint(str(logdir / "checkpoints")).endswith(
      f"ckpt-{step}")

  # SIGINT (Ctrl-C) after resuming: the same, exit 128 + 2.
  again = _start(logdir)
  assert _wait_for_steps(again) > step
  again.send_signal(signal.SIGINT)
  _, err = again.communicate(timeout=300)
  assert again.returncode == 128 + signal.SIGINT, err[-2000:]
  assert err.strip().startswith("train.py: SIGINT: saved ")

  # SIGKILL leaves the lock file behind, but not the lock.
  killed = _start(logdir)
  _wait_for_steps(killed)
  killed.kill()
  killed.wait()
  assert (logdir / ".lock").exists()
  last = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), f"--logdir={logdir}",
       "--train_steps=1", "--batch_size=32", "--embedding_dim=16",
       "--validation_split=0.01"], capture_output=True, text=True, cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), check=False)
  assert last.returncode == 0, last.stderr[-2000:]
  assert "Resuming" in last.stdout


def test_run_lock_is_exclusive_and_leaves_no_empty_directory(tmp_path):
  from cfal.errors import UsageError  # pylint: disable=import-outside-toplevel
  from cfal.training.run_dir import RunLock  # pylint: disable=import-outside-toplevel
  logdir = tmp_path / "run"
  with RunLock(logdir):
    with pytest.raises(UsageError, match=f"is in use by cfal run pid "
                       f"{os.getpid()} on "):
      with RunLock(logdir):
        raise AssertionError("a second lock was granted")
    (logdir / "config.json").write_text("{}")
  with RunLock(logdir) as lock:   # released on exit
    assert (lock.logdir / ".lock").exists()
  assert (logdir / "config.json").exists()
  with RunLock(tmp_path / "refused") as lock:
    assert lock.logdir.exists()
  assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_soak_twenty_kills_end_bit_identical(tmp_path):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("soak",
                                                ROOT / "bench" / "soak.py")
  soak = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(soak)
  result = soak.soak(tmp_path, cycles=20, seed=0)
  exits = [k["exit"] for k in result["kills"]]
  # A rerun of the finished run can finish its evaluation and export
  # before the kill lands (exit 0); most cycles must be real kills.
  assert set(exits) <= {-signal.SIGKILL, 0}, exits
  assert exits.count(-signal.SIGKILL) >= 15, exits
  assert result["differing_variables"] == []
  assert result["same_validation"] and result["same_best_checkpoint"]
