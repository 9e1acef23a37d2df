"""Parameter groups and a frozen backbone body, on short real runs."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfal.training import build as build_lib
from cfal.training.optimization import make_groups, parameter_parts
from cfal.training.runner import train
from support.training import (assert_same_run, checkpoint_weights,
                              deterministic_config, kill_and_resume,
                              small_config, straight_run)


def _optimizer(config, **fields):
  return dataclasses.replace(config, optimizer=dataclasses.replace(
      config.optimizer, **fields))


def _parts():
  backbone = keras.Sequential([
      keras.Input((4,)), keras.layers.Dense(3, name="body"),
      keras.layers.Dense(2, name="embedding")])
  head = tf.Module()
  head.prototypes = tf.Variable(tf.zeros([3, 2]))
  return parameter_parts(backbone, head)


@pytest.mark.parametrize("head_rate, freeze, expected", [
    (None, 0, [("all", 0.1, 0)]),
    (1.0, 0, [("body+projection", 0.1, 0), ("head", 1.0, 0)]),
    (None, 7, [("body", 0.1, 7), ("projection+head", 0.1, 0)]),
    (1.0, 7, [("body", 0.1, 7), ("projection", 0.1, 0), ("head", 1.0, 0)]),
])
def test_parts_with_the_same_rate_and_start_share_an_optimizer(
    head_rate, freeze, expected):
  made = []
  optimization = make_groups(
      _parts(), learning_rate=0.1, head_learning_rate=head_rate,
      freeze_backbone_steps=freeze,
      optimizer_for=lambda rate, first: made.append((rate, first)) or (
          keras.optimizers.SGD(rate)))
  got = [(g.name, float(g.optimizer.learning_rate), g.first_step)
         for g in optimization.groups]
  assert got == [(n, pytest.approx(r), f) for n, r, f in expected]
  sizes = {"body": 2, "projection": 2, "head": 1, "all": 5,
           "body+projection": 4, "projection+head": 3}
  for group in optimization.groups:
    assert len(group.variables) == sizes[group.name]
  assert optimization.boundaries() == ([7] if freeze else [])
  keys = set(optimization.checkpoint_parts)
  assert keys == ({"optimizer"} if len(expected) == 1 else
                  {f"optimizer_{n.replace('+', '_')}" for n, _, _ in expected})


def test_a_late_group_reads_the_schedule_on_the_runs_clock(tmp_path):
  # The body joins at step 10: its first update must use the run's
  # learning rate at step 10, not at step 0.
  config = _optimizer(small_config(tmp_path / "run", train_steps=40),
                      freeze_backbone_steps=10, learning_rate=0.01)
  built = build_lib.build(config)
  body = next(g for g in built.optimization.groups if g.name == "body")
  rest = next(g for g in built.optimization.groups if g.name != "body")
  assert int(body.optimizer.iterations) == 0
  schedule = keras.optimizers.schedules.CosineDecay(0.01, 40)
  assert float(body.optimizer.learning_rate) == pytest.approx(
      float(schedule(10)))
  assert float(rest.optimizer.learning_rate) == pytest.approx(0.01)


def _variables_by_layer(backbone) -> dict[str, list[np.ndarray]]:
  return {layer.name: [w.numpy() for w in layer.weights]
          for layer in backbone.layers if layer.weights}


def test_a_frozen_body_stays_bit_identical_while_the_rest_trains(tmp_path):
  config = _optimizer(small_config(tmp_path / "run", train_steps=10,
                                   steps_per_loop=5),
                      freeze_backbone_steps=10, head_learning_rate=0.01)
  result = train(config, echo=lambda _: None)
  assert result.step == 10
  initial = build_lib.build(config, training=False)
  before = _variables_by_layer(initial.backbone)
  prototypes = initial.head.prototypes.numpy()
  trained = build_lib.build(config, training=False)
  trained.checkpoint.read(tf.train.latest_checkpoint(
      str(tmp_path / "run" / "checkpoints"))).expect_partial()
  after = _variables_by_layer(trained.backbone)
  assert "embedding" in after and "fc_bn" in after
  for name, values in before.items():
    for a, b in zip(values, after[name]):
      if name == "embedding":
        assert not np.array_equal(a, b), name     # the projection trains
      else:   # weights and BatchNorm statistics alike
        np.testing.assert_array_equal(a, b, err_msg=name)
  assert not np.array_equal(prototypes, trained.head.prototypes.numpy())
  # The body's optimizer never stepped; the others stepped every time.
  weights = checkpoint_weights(tmp_path / "run")
  iterations = {k.split("/")[0]: int(v) for k, v in weights.items()
                if k.endswith("_iterations/.ATTRIBUTES/VARIABLE_VALUE")}
  assert iterations == {"optimizer_body": 0, "optimizer_projection": 10,
                        "optimizer_head": 10}


def _unfreezing_config(logdir):
  """30 deterministic steps; the body joins at step 12 (calls end there),
  the head has its own rate."""
  return _optimizer(deterministic_config(logdir),
                    freeze_backbone_steps=12, head_learning_rate=0.005)


@pytest.fixture(scope="module")
def straight_unfreezing(tmp_path_factory):
  return straight_run(_unfreezing_config(
      tmp_path_factory.mktemp("unfreezing") / "run"))


@pytest.mark.parametrize("point", [
    # Each is a killed run and its resume (about a minute together with the
    # uninterrupted run): kept for `make test-slow`.
    pytest.param("step:3", marks=pytest.mark.slow),   # 10-12, the last frozen
    pytest.param("step:4", marks=pytest.mark.slow),   # 12-15, the first after
])
def test_a_run_killed_either_side_of_the_unfreeze_resumes_bit_identical(
    point, straight_unfreezing, tmp_path):
  result = kill_and_resume(_unfreezing_config(tmp_path / "run"), point)
  assert_same_run(tmp_path / "run", result, straight_unfreezing)
  weights = checkpoint_weights(tmp_path / "run")
  assert int(weights["optimizer_body/_iterations/.ATTRIBUTES/"
                     "VARIABLE_VALUE"]) == 18


def test_a_run_starts_from_another_runs_backbone(tmp_path):
  # Transfer between cfal runs: the body comes from the source run's best
  # checkpoint and, frozen, is still exactly that after training; the
  # head and projection are new. A resumed run keeps its own weights.
  source = small_config(tmp_path / "source", train_steps=6, steps_per_loop=3)
  train(source, echo=lambda _: None)
  config = _optimizer(small_config(tmp_path / "target", head="softmax",
                                   train_steps=4, steps_per_loop=2),
                      freeze_backbone_steps=4)
  config = dataclasses.replace(config, model=dataclasses.replace(
      config.model, pretrained=str(tmp_path / "source")))
  lines = []
  train(config, echo=lines.append)
  assert any("the backbone of" in line and "best" in line for line in lines)
  source_model = build_lib.build(source, training=False)
  source_model.checkpoint.read(tf.train.latest_checkpoint(
      str(tmp_path / "source" / "checkpoints" / "best"))).expect_partial()
  target = build_lib.build(config, training=False)
  target.checkpoint.read(tf.train.latest_checkpoint(
      str(tmp_path / "target" / "checkpoints"))).expect_partial()
  a = _variables_by_layer(source_model.backbone)
  b = _variables_by_layer(target.backbone)
  for name, values in a.items():
    for x, y in zip(values, b[name]):
      if name == "embedding":
        assert not np.array_equal(x, y)
      else:
        np.testing.assert_array_equal(x, y, err_msg=name)
  lines = []
  train(dataclasses.replace(config, run=dataclasses.replace(
      config.run, train_steps=6)), echo=lines.append)
  assert not any("the backbone of" in line for line in lines)
