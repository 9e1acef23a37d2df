"""Loss parts on any head, from train.py's flags to a falling loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cfal.heads import parts
from cfal.training import build
from cfal.training.runner import train
from support.training import train_script

TRAIN = train_script()


def config_from(tmp_path, *flags):
  try:
    TRAIN.FLAGS(["train.py", f"--logdir={tmp_path}", "--train_steps=40",
                 "--steps_per_loop=10", "--batch_size=32",
                 "--embedding_dim=16", "--validation_split=0.01",
                 "--learning_rate=0.002", "--imbalance_ratio=20",
                 "--projector_points=100", *flags])
    TRAIN.check_flags()
    return TRAIN.config_from_flags()
  finally:
    TRAIN.FLAGS.unparse_flags()


@pytest.mark.parametrize("flags, weighted, gamma", [
    (["--head=arcface", "--scale=16", "--class_weighting=effective_number",
      "--beta=0.999"], True, None),
    (["--head=cosface", "--scale=16", "--gamma=2"], False, 2.0),
    (["--head=softmax", "--class_weights=1,1,1,1,2,2,2,4,4,4"], True, None),
], ids=["class_balanced_arcface", "focal_cosface", "class_weighted_softmax"])
def test_loss_parts_train_on_any_head_from_flags(flags, weighted, gamma,
                                                 tmp_path):
  config = config_from(tmp_path, *flags)
  built = build.build(config, training=False)
  head = built.head
  assert isinstance(head.class_weights, parts.ClassWeights) == weighted
  if weighted:
    counts = built.data.class_counts
    assert counts.max() / counts.min() == pytest.approx(20, rel=0.02)
    weights = head.class_weights.values
    if "--class_weighting=effective_number" in flags:
      assert weights.sum() == pytest.approx(10, rel=1e-9)
    assert weights[-1] > weights[0]   # the rarest class weighs most
  if gamma is None:
    assert head.focal is None
  else:
    assert head.focal.gamma == gamma and head.focal.back_propagate
  result = train(config, echo=lambda _: None)
  losses = [h["loss"] for h in result.history]
  assert len(losses) == 4 and np.all(np.isfinite(losses))
  assert losses[-1] < losses[0], losses
  recorded = json.loads((tmp_path / "config.json").read_text())
  assert recorded["model"]["head_args"] == config.model.head_args
