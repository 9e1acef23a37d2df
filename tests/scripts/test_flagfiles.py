"""Every recipe in flags/ parses with train.py's flags and fits its head."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from cfal.training.build import build_head
from support.training import train_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "flags").rglob("*.flags")
                 if p.name != "common.flags")


TRAIN = train_script()


def test_there_are_recipes_for_the_seeds_and_every_head():
  names = {p.stem for p in RECIPES}
  assert {"arcface_mnist_3d", "softmax_mnist_3d",
          "center_loss_mnist_2d", "cfal_cct_histology"} <= names
  import cfal.heads  # pylint: disable=import-outside-toplevel
  per_head = {p.stem for p in (ROOT / "flags" / "fashion_mnist_lt").glob(
      "*.flags")}
  assert set(cfal.heads.HEADS) <= per_head


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_its_head_accepts_it(recipe, monkeypatch):
  monkeypatch.chdir(ROOT)   # nested --flagfile paths are relative to the root
  values = TRAIN.FLAGS
  argv = values.read_flags_from_files([f"--flagfile={recipe}"],
                                      force_gnu=True)
  try:
    values(["train.py"] + argv)   # unknown flags raise here
    config = TRAIN.config_from_flags()
  finally:
    values.unparse_flags()
  assert config.run.logdir.startswith("runs/")
  head = build_head(config, np.arange(1, 11) * 10, num_classes=10)
  for name, value in config.model.head_args.items():
    assert getattr(head, name, value) == pytest.approx(value), name
