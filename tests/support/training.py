"""Small, real training runs for the tests."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from cfal.data.datasets import DataConfig
from cfal.training.config import (ModelConfig, OptimizerConfig, RunConfig,
                                  TrainConfig)


def small_config(logdir, *, head="softmax", backbone="seed_cnn",
                 head_args=None, data=None, **run) -> TrainConfig:
  """A few dozen steps on real Fashion-MNIST with a small validation set."""
  run_args = dict(logdir=str(logdir), train_steps=20, batch_size=32,
                  steps_per_loop=10, checkpoint_every=10, projector_points=200)
  run_args.update(run)
  return TrainConfig(
      data=data or DataConfig(name="fashion_mnist", validation_split=0.01),
      model=ModelConfig(backbone=backbone, embedding_dim=16, head=head,
                        head_args=head_args or {}),
      optimizer=OptimizerConfig(learning_rate=2e-3),
      run=RunConfig(**run_args))


def replace_run(config: TrainConfig, **run) -> TrainConfig:
  return dataclasses.replace(config, run=dataclasses.replace(config.run, **run))


def checkpoint_weights(logdir) -> dict[str, np.ndarray]:
  """Every saved variable of the run's latest checkpoint, by name."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  path = tf.train.latest_checkpoint(str(logdir) + "/checkpoints")
  reader = tf.train.load_checkpoint(path)
  weights = {}
  for name in reader.get_variable_to_shape_map():
    if name.startswith("_CHECKPOINTABLE") or "save_counter" in name:
      continue
    value = reader.get_tensor(name)
    if np.issubdtype(np.asarray(value).dtype, np.number):
      weights[name] = value
  return weights


def train_script():
  """The train command's module (`cfal.commands.train`, what train.py and
  cfal-train run): its flags, `check_flags` and `config_from_flags`."""
  return importlib.import_module("cfal.commands.train")


ROOT = pathlib.Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "support" / "fault_driver.py"


def deterministic_config(logdir, **run):
  """30 steps; checkpoints at 10, 15, 20, 30; validation at 15 and 30."""
  args = dict(train_steps=30, steps_per_loop=5, checkpoint_every=10,
              eval_every=15, deterministic=True)
  args.update(run)
  return small_config(logdir, head="cfal", head_args={"sigma": 16.0}, **args)


def run_driver(config, point: str, timeout: float = 600):
  """Runs `config` in tests/support/fault_driver.py, killed at `point`."""
  path = pathlib.Path(config.run.logdir).parent / (
      pathlib.Path(config.run.logdir).name + ".json")
  path.write_text(config.to_json())
  return subprocess.run([sys.executable, str(DRIVER), str(path), point],
                        capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT, check=False,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def export_embeddings(logdir) -> np.ndarray:
  """The exported model's embeddings of 8 fixed random images."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  model = tf.saved_model.load(str(pathlib.Path(logdir) / "export"))
  images = tf.random.stateless_uniform([8, 28, 28, 1], seed=[5, 6])
  return model.embed(images)["embeddings"].numpy()


def straight_run(config) -> dict:
  """Trains `config` uninterrupted; what `assert_same_run` compares with."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from cfal.training.runner import train  # pylint: disable=import-outside-toplevel
  logdir = pathlib.Path(config.run.logdir)
  result = train(config, echo=lambda _: None)
  return {"logdir": logdir, "weights": checkpoint_weights(logdir),
          "validation": result.validation,
          "best": result.best_balanced_accuracy,
          "best_checkpoint": tf.train.latest_checkpoint(
              str(logdir / "checkpoints" / "best")),
          "export": export_embeddings(logdir)}


def assert_same_run(logdir, result, straight) -> None:
  """The run in `logdir` ended bit-identical to `straight_run`'s: every
  checkpointed variable, the validation, the best checkpoint, the export."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  logdir = pathlib.Path(logdir)
  weights = checkpoint_weights(logdir)
  assert weights.keys() == straight["weights"].keys()
  for name, value in straight["weights"].items():
    np.testing.assert_array_equal(weights[name], value, err_msg=name)
  assert json.dumps(result.validation, sort_keys=True) == json.dumps(
      straight["validation"], sort_keys=True)
  assert result.best_balanced_accuracy == straight["best"]
  best = tf.train.latest_checkpoint(str(logdir / "checkpoints" / "best"))
  assert pathlib.Path(best).name == pathlib.Path(
      straight["best_checkpoint"]).name
  np.testing.assert_array_equal(export_embeddings(logdir), straight["export"])


def kill_and_resume(config, point: str, echo=None):
  """Kills a run of `config` at `point` (fault_driver.py), checks it died
  by SIGKILL, reruns it to the end here and checks it resumed; returns
  the rerun's result. `echo` also gets the rerun's progress lines."""
  import signal  # pylint: disable=import-outside-toplevel
  from cfal.training.runner import train  # pylint: disable=import-outside-toplevel
  killed = run_driver(config, point)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  lines = []

  def record(line):
    lines.append(line)
    if echo is not None:
      echo(line)
  result = train(config, echo=record)
  assert result.step == config.run.train_steps
  assert any(line.startswith("Resuming") for line in lines), lines[:3]
  return result
