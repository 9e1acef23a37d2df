"""Deferred re-weighting (Cao et al. 2019): the weights, the loss and its
gradient against float64 references, the switch's place in the run, and
runs resumed either side of it."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfal.heads
from cfal.data.config import DataConfig
from cfal.errors import UsageError
from cfal.heads.parts import ClassWeights
from cfal.training.config import TrainConfig
from cfal.training.optimization import Optimization
from cfal.training.reweighting import (DeferredReweighting, first_step,
                                       make_reweighting)
from cfal.training.runner import train
from cfal.training.steps import Steps
from support.training import (assert_same_run, deterministic_config,
                              kill_and_resume, small_config, straight_run)

# Counts from 1 to 1e5, a class with one example and one with none.
COUNTS = [100_000, 3_000, 120, 7, 1, 0]
BETA = 0.9999


def _reference_weights(counts, beta):
  """Cui et al. 2019 in float64, written out: w_c = (1 - beta) / (1 -
  beta^n_c) for the classes with examples, scaled so their weights sum to
  their number; an empty class weighs 0."""
  n = np.asarray(counts, np.float64)
  present = n > 0
  w = np.zeros_like(n)
  w[present] = (1.0 - beta) / (1.0 - np.power(beta, n[present]))
  return w * present.sum() / w.sum()


def test_effective_number_weights_match_the_formula_and_survive_empty_classes():
  weights = ClassWeights.effective_number(COUNTS, BETA, allow_empty=True)
  np.testing.assert_allclose(weights.values, _reference_weights(COUNTS, BETA),
                             rtol=1e-9)
  assert np.isfinite(weights.values).all()
  assert weights.values[-1] == 0.0
  assert weights.values[:-1].sum() == pytest.approx(5.0, rel=1e-12)
  # Rarer classes weigh more: 1e4 times more from 1 to 1e5 examples.
  assert np.all(np.diff(weights.values[:-1]) > 0)
  # Without an empty class: the paper's normalisation, sum_c w_c = C, and
  # the same weights the heads' own class weighting uses.
  full = ClassWeights.effective_number(COUNTS[:-1], BETA)
  assert full.values.sum() == pytest.approx(5.0, rel=1e-12)
  np.testing.assert_allclose(full.values, weights.values[:-1], rtol=1e-12)
  with pytest.raises(ValueError, match="drop empty classes"):
    ClassWeights.effective_number(COUNTS, BETA)


def _softmax_reference(x, w, labels, weights):
  """mean_i weights_i * CE_i and its gradient in the prototypes (float64):
  d/dW_j = (1/B) sum_i weights_i (p_ij - [y_i = j]) x_i."""
  x, w = x.astype(np.float64), w.astype(np.float64)
  logits = x @ w.T
  logits -= logits.max(axis=1, keepdims=True)
  log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  rows = np.arange(len(labels))
  loss = -log_p[rows, labels]
  error = np.exp(log_p)
  error[rows, labels] -= 1.0
  grad = (weights[:, None] * error).T @ x / len(labels)
  return float(np.mean(weights * loss)), grad


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_the_reweighted_loop_weights_each_loss_by_its_class(mode):
  # A Softmax head on raw 4-d "embeddings"; one SGD step (rate 1) per call,
  # so the step's update is minus the gradient of the loss it reports.
  rng = np.random.default_rng(0)
  num_classes, dim = len(COUNTS), 4
  labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 0],
                    np.int32)
  images = rng.normal(size=(len(labels), dim, 1, 1)).astype(np.float32)
  x = images.reshape(len(labels), dim)
  strategy = tf.distribute.get_strategy()
  backbone = keras.Sequential([keras.Input((dim, 1, 1)),
                               keras.layers.Flatten()])
  head = cfal.heads.Softmax(num_classes=num_classes, embedding_dim=dim,
                            use_bias=False, seed=0)
  optimizer = keras.optimizers.SGD(1.0)
  optimizer.build(list(head.trainable_variables))
  reweighting = DeferredReweighting(
      first_step=3, weights=ClassWeights.effective_number(
          COUNTS, BETA, allow_empty=True), beta=BETA)
  steps = Steps(strategy=strategy, backbone=backbone, head=head,
                optimization=Optimization.single(
                    optimizer, head.trainable_variables),
                global_batch_size=len(labels), mode=mode,
                reweighting=reweighting)
  assert steps.boundaries() == [3]
  assert steps.loop_for(0) is steps.loop_for(2)
  assert steps.loop_for(3) is steps.loop_for(9)
  assert steps.loop_for(2) is not steps.loop_for(3)
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  w_y = _reference_weights(COUNTS, BETA)[labels]
  for step, weights in ((2, np.ones(len(labels))), (3, w_y)):
    before = head.prototypes.numpy()
    loss, grad = _softmax_reference(x, before, labels, weights)
    results = steps.loop_for(step)(iterator, tf.constant(1), tf.constant(0))
    assert float(results["loss"]) == pytest.approx(loss, rel=1e-5), step
    np.testing.assert_allclose(before - head.prototypes.numpy(), grad,
                               rtol=1e-4, atol=1e-6, err_msg=str(step))
  # The weights moved the loss: a test that cannot tell them apart would
  # pass for an unweighted loop too.
  assert abs(_softmax_reference(x, before, labels, w_y)[0]
             - _softmax_reference(x, before, labels, np.ones(len(labels)))[0]
             ) > 0.1


def _with(config, **optimizer):
  return dataclasses.replace(config, optimizer=dataclasses.replace(
      config.optimizer, **optimizer))


def test_the_start_converts_epochs_as_the_run_length_does():
  opt = TrainConfig().optimizer
  assert first_step(opt, 104) is None
  assert first_step(dataclasses.replace(opt, reweight_from_epoch=8.0),
                    104) == 832
  assert first_step(dataclasses.replace(opt, reweight_from_epoch=0.29),
                    104) == 31   # ceil(30.16), as epochs -> steps
  assert first_step(dataclasses.replace(opt, reweight_from_step=5), 104) == 5


@pytest.mark.parametrize("head, args, change, message", [
    ("softmax", {}, dict(reweight_from_step=20), "starts deferred "
     "re-weighting after 20 steps, but the run trains 20 steps"),
    ("softmax", {}, dict(reweight_from_step=3, reweight_from_epoch=0.5),
     "both say when deferred re-weighting starts: give one"),
    ("focal", {}, dict(reweight_from_step=3), "the Focal head already "
     "weights its classes"),
    ("softmax", {"class_weights": [1.0] * 6}, dict(reweight_from_step=3),
     "would apply class weights twice"),
])
def test_what_cannot_work_is_refused_when_the_run_is_built(head, args, change,
                                                           message):
  config = _with(small_config("unused", head=head, head_args=args), **change)
  head_object = cfal.heads.build_head(head, num_classes=6, embedding_dim=4,
                                      class_counts=COUNTS[:-1] + [2],
                                      **args)
  with pytest.raises(UsageError, match=message):
    make_reweighting(config.optimizer, class_counts=COUNTS[:-1] + [2],
                     head=head_object, per_epoch=10, total_steps=20)
  assert make_reweighting(
      _with(config, reweight_from_step=None,
            reweight_from_epoch=None).optimizer,
      class_counts=COUNTS, head=head_object, per_epoch=10,
      total_steps=20) is None


def test_a_config_from_before_reweighting_loads_with_it_off():
  raw = json.loads(TrainConfig().to_json())
  for key in ("reweight_from_step", "reweight_from_epoch", "reweight_beta"):
    del raw["optimizer"][key]
  config = TrainConfig.from_json(json.dumps(raw))
  assert config.optimizer.reweight_from_step is None
  assert config.optimizer.reweight_from_epoch is None
  assert config.optimizer.reweight_beta == 0.9999


def _train_scalars(logdir, tag):
  values = {}
  for events in sorted((logdir / "train").glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(events)):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


def test_compiled_calls_end_where_reweighting_starts(tmp_path):
  # 4 steps per call and the switch after 6 steps: the calls end at 4, 6
  # (the switch), 10; the train summaries say which calls were re-weighted.
  data = DataConfig(name="fashion_mnist", validation_split=0.01,
                    imbalance_ratio=10.0)
  config = _with(small_config(tmp_path / "run", data=data, train_steps=10,
                              steps_per_loop=4, checkpoint_every=10),
                 reweight_from_step=6)
  lines = []
  result = train(config, echo=lines.append)
  assert [h["step"] for h in result.history] == [4, 6, 10]
  assert _train_scalars(tmp_path / "run", "class_reweighting") == {
      4: 0.0, 6: 0.0, 10: 1.0}
  assert ("step 6: deferred re-weighting on (effective number, "
          "beta=0.9999)") in lines


# -- resumed runs -------------------------------------------------------------


def _drw_config(logdir):
  """30 deterministic steps on long-tailed data (ratio 10, so the weights
  differ); re-weighting from step 12, checkpoints every 6 steps. Calls:
  0-5, 5-6, 6-11, 11-12, 12-15 (the first re-weighted), 15-18, 18-23,
  ..."""
  config = deterministic_config(logdir, checkpoint_every=6)
  config = dataclasses.replace(
      config, data=dataclasses.replace(config.data, imbalance_ratio=10.0),
      model=dataclasses.replace(config.model, head_args={
          "sigma": 16.0, "class_weighting": "none"}))
  return _with(config, reweight_from_step=12)


@pytest.fixture(scope="module")
def straight_drw(tmp_path_factory):
  logdir = tmp_path_factory.mktemp("drw") / "run"
  straight = straight_run(_drw_config(logdir))
  switch = _train_scalars(logdir, "class_reweighting")
  assert switch[12] == 0.0 and switch[15] == 1.0, switch
  return straight


@pytest.mark.parametrize("point, resumed_at", [
    # A killed run and its resume each (with the uninterrupted run, about
    # two and a half minutes): kept for `make test-slow`. The driver kills
    # half the previous call's time into the call, so each is a call at
    # least as long as half the one before (the first re-weighted call
    # also compiles its loop).
    pytest.param("step:3", 6, marks=pytest.mark.slow),    # in 6-11
    pytest.param("step:5", 12, marks=pytest.mark.slow),   # in 12-15
    pytest.param("step:7", 18, marks=pytest.mark.slow),   # in 18-23
])
def test_a_run_killed_around_the_switch_resumes_bit_identical(
    point, resumed_at, straight_drw, tmp_path):
  # Resumed before the switch (and crossing it again), exactly at it, and
  # after it.
  config = _drw_config(tmp_path / "run")
  lines = []
  result = kill_and_resume(config, point, echo=lines.append)
  assert f"Resuming {tmp_path / 'run'} at step {resumed_at}." in lines
  assert_same_run(tmp_path / "run", result, straight_drw)
