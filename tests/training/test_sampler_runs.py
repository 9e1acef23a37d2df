"""A run trains on the sampler its config names, and resumes exactly.

The samplers' own statistics are in tests/data/test_sampler.py; here the
builder must hand the sampler (and the run's length, which the
progressive schedule spans) to the pipeline, under a real strategy, and a
class-balanced run killed mid-way must end bit-identical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cfal.data import pipeline
from cfal.data.config import DataConfig
from cfal.training import build as build_lib
from cfal.training.runner import hparams
from support.training import (assert_same_run, deterministic_config,
                              kill_and_resume, small_config, straight_run)


def _long_tailed(sampler: str) -> DataConfig:
  return DataConfig(name="fashion_mnist", validation_split=0.01,
                    imbalance_ratio=50.0, sampler=sampler)


def test_the_train_iterator_draws_with_the_configured_sampler(tmp_path):
  config = small_config(tmp_path, data=_long_tailed("progressive"),
                        train_steps=40, cpu_replicas=2)
  built = build_lib.build(config, training=False)
  assert built.strategy.num_replicas_in_sync == 2
  start, steps = 5, 3
  iterator = build_lib.train_iterator(built, start)
  got = []
  for _ in range(steps):
    images, labels = next(iterator)
    local = built.strategy.experimental_local_results
    got.append((np.concatenate([x.numpy() for x in local(images)]),
                np.concatenate([y.numpy() for y in local(labels)])))

  def one_device(**sampling):
    return [(x.numpy(), y.numpy()) for x, y in pipeline.train_dataset(
        built.data.source, built.data.train_indices, global_batch_size=32,
        seed=config.run.seed, start_step=start, **sampling).take(steps)]
  want = one_device(sampler="progressive", total_steps=40)
  for (x, y), (wx, wy) in zip(got, want):
    np.testing.assert_array_equal(x, wx)
    np.testing.assert_array_equal(y, wy)
  # The schedule's length matters, and so does the sampler.
  for other in (one_device(sampler="progressive", total_steps=400),
                one_device()):
    assert not np.array_equal(np.stack([y for _, y in got]),
                              np.stack([y for _, y in other]))
  assert hparams(config, "function")["sampler"] == "progressive"


def _balanced_config(logdir):
  return deterministic_config(logdir, data=_long_tailed("class_balanced"))


@pytest.mark.slow
def test_a_class_balanced_run_killed_mid_way_resumes_bit_identical(
    tmp_path):
  straight = straight_run(_balanced_config(tmp_path / "straight"))
  result = kill_and_resume(_balanced_config(tmp_path / "run"), "step:4")
  assert_same_run(tmp_path / "run", result, straight)
  assert np.isfinite(result.validation["loss"])
  record = json.loads((tmp_path / "run" / "config.json").read_text())
  assert record["data"]["sampler"] == "class_balanced"
