"""Small, real training runs for the tests."""

from __future__ import annotations

import dataclasses
import importlib

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
