"""A tile folder as a pathology user trains on it: whole slides held out,
the split recorded, an external test set evaluated; on generated tiles."""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image

from cfal.data.config import DataConfig
from cfal.training import evaluate as evaluation
from cfal.training.runner import train
from support.training import small_config

CLASSES = ("ADI", "LYM", "TUM")


def _tiles(root: pathlib.Path, slides: range, per_slide: int = 4,
           seed: int = 0) -> pathlib.Path:
  """class/<CLASS>-slide<g>-<i>.png: each class its own colour, noise per
  tile, so a few steps can learn it."""
  rng = np.random.default_rng(seed)
  for c, name in enumerate(CLASSES):
    (root / name).mkdir(parents=True)
    for g in slides:
      for i in range(per_slide):
        tile = rng.integers(0, 60, (32, 32, 3))
        tile[..., c] += 180
        Image.fromarray(tile.astype(np.uint8)).save(
            root / name / f"{name}-slide{g:02d}-{i}.png")
  return root


def test_slides_never_straddle_the_split_and_the_test_set_is_evaluated(
    tmp_path):
  train_root = _tiles(tmp_path / "train", range(8))
  test_root = _tiles(tmp_path / "test", range(20, 22), seed=1)
  data = DataConfig(name=f"folder:{train_root}", image_size=32,
                    validation_split=0.25,
                    group_by=r"slide(?P<group>\d+)",
                    test_dataset=f"folder:{test_root}")
  logdir = tmp_path / "run"
  lines = []
  result = train(small_config(logdir, data=data, batch_size=8,
                              train_steps=4, steps_per_loop=2,
                              checkpoint_every=2, projector_points=16),
                 echo=lines.append)
  assert result.step == 4
  assert any("group" in line for line in lines if line.startswith("note:"))

  record = json.loads((logdir / "splits.json").read_text())
  groups = {split: {(e[1], e[2]) for e in record["splits"][split]["entries"]}
            for split in ("train", "validation")}
  assert groups["train"] and groups["validation"]
  assert not groups["train"] & groups["validation"]     # no slide on both
  files = [e[0] for s in ("train", "validation")
           for e in record["splits"][s]["entries"]]
  assert len(files) == len(set(files)) == 3 * 8 * 4
  assert record["splits"]["test"]["files"] == 3 * 2 * 4

  saved = json.loads((logdir / "config.json").read_text())
  assert saved["data"]["test_dataset"] == f"folder:{test_root}"
  report = evaluation.evaluate_run(
      evaluation.EvalConfig(logdir=str(logdir), split="test"),
      echo=lambda _: None)
  assert report["num_samples"] == 24
  assert list(report["per_class"]) == list(CLASSES)
