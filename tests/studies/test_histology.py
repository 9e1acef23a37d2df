"""The histology study: its one command without the data (one line, and
skipped in a run of every experiment), its environment variables, and the
whole study end to end on a generated tile folder at a tiny budget."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from studies import experiments, run, runner, tables
from support.training import ROOT

# NCT-CRC-HE-100K's classes, each its own colour here.
CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
ENV = ("CFAL_HISTOLOGY_TRAIN", "CFAL_HISTOLOGY_TEST",
       "CFAL_HISTOLOGY_GROUP_BY", "CFAL_HISTOLOGY_FLAGS")
# The study at a budget the test can afford: a small CNN from scratch on
# 32 px tiles, 4 steps of 8, one slide of four held out for validation.
TINY = ("--backbone=seed_cnn --backbone_args= --pretrained= --image_size=32 "
        "--embedding_dim=8 --batch_size=8 --train_steps=4 --steps_per_loop=2 "
        "--checkpoint_every=2 --freeze_backbone_steps=0 --projector_points=20 "
        "--validation_split=0.25 --augment=none")


def _tiles(root: pathlib.Path, slides: range, per_slide: int,
           seed: int) -> pathlib.Path:
  """<CLASS>/<CLASS>-slide<g>-<i>.png: every slide has tiles of every
  class (as a real slide has several tissues), nearly balanced like
  NCT-CRC-HE-100K (one tile fewer per slide for every third class)."""
  rng = np.random.default_rng(seed)
  colours = rng.integers(40, 216, (len(CLASSES), 3))
  for c, name in enumerate(CLASSES):
    (root / name).mkdir(parents=True)
    for g in slides:
      for i in range(per_slide - c % 3):
        tile = colours[c] + rng.normal(0, 20, (32, 32, 3))
        Image.fromarray(np.clip(tile, 0, 255).astype(np.uint8)).save(
            root / name / f"{name}-slide{g:02d}-{i}.png")
  return root


def _clear(monkeypatch) -> None:
  for name in ENV:
    monkeypatch.delenv(name, raising=False)


def test_without_the_data_the_command_stops_with_one_line(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ENV}
  env.update(CFAL_HISTOLOGY_TRAIN=str(tmp_path / "NCT-CRC-HE-100K"),
             CFAL_HISTOLOGY_TEST=str(tmp_path / "CRC-VAL-HE-7K"),
             PYTHONPATH=str(ROOT))
  done = subprocess.run([sys.executable, "studies/run.py", "histology"],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 2 and not done.stdout
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1, done.stderr
  assert lines[0].startswith("error: histology: CFAL_HISTOLOGY_TRAIN: no "
                             f"folder {tmp_path / 'NCT-CRC-HE-100K'};")


def test_a_run_of_every_experiment_skips_histology_without_its_data(
    tmp_path, monkeypatch, capsys):
  _clear(monkeypatch)
  (tmp_path / "train").mkdir()
  monkeypatch.setenv("CFAL_HISTOLOGY_TRAIN", str(tmp_path / "train"))
  monkeypatch.setenv("CFAL_HISTOLOGY_TEST", str(tmp_path / "missing"))
  ready = run.runnable(["long_tail", "histology"], explicit=False)
  assert [e.name for e in ready] == ["long_tail"]
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(
      "skipping histology: CFAL_HISTOLOGY_TEST: no folder ")
  # Named, it stops everything before anything runs.
  with pytest.raises(runner.Unavailable, match="^histology: ") as error:
    run.runnable(["long_tail", "histology"], explicit=True)
  assert "\n" not in str(error.value)
  # The runner refuses it too (one line), and a dry run only notes it.
  experiment = experiments.load("histology")
  lines = []
  study = runner.Runner(runs_dir=tmp_path / "runs", echo=lines.append,
                        results_dir=tmp_path / "results")
  with pytest.raises(runner.Unavailable, match="CFAL_HISTOLOGY_TEST"):
    study.run_experiment(experiment)
  study.dry_run = True
  study.run_experiment(experiment, seeds=[0], only=["softmax"])
  assert lines[0].startswith("note: CFAL_HISTOLOGY_TEST: no folder")
  assert "--dataset=folder:" + str(tmp_path / "train") in lines[1]


def test_the_environment_sets_data_split_and_flags(tmp_path, monkeypatch):
  module = experiments.module("histology")
  (tmp_path / "tr").mkdir()
  (tmp_path / "te").mkdir()
  settings = module.settings_from({
      "CFAL_HISTOLOGY_TRAIN": str(tmp_path / "tr"),
      "CFAL_HISTOLOGY_TEST": "csv:" + str(tmp_path / "te" / "m.csv"),
      "CFAL_HISTOLOGY_GROUP_BY": "TCGA-(?P<group>..-....)",
      "CFAL_HISTOLOGY_FLAGS": "--gpus=4 --batch_size=256 --train_steps=1000 "
                              "--deterministic"})
  assert settings.test == f"csv:{tmp_path / 'te' / 'm.csv'}"
  assert module.check(settings).startswith("CFAL_HISTOLOGY_TEST: no "
                                           "manifest ")
  (tmp_path / "te" / "m.csv").write_text("path,label\n")
  assert module.check(settings) is None
  ldam = module.experiment(settings).run("ldam_drw")
  assert ldam.flags["group_by"] == "TCGA-(?P<group>..-....)"
  assert ldam.flags["gpus"] == "4" and ldam.flags["deterministic"] is True
  assert ldam.flags["train_steps"] == "1000"
  assert ldam.flags["reweight_from_step"] == 800       # 80% of the steps
  assert ldam.grid.values == {"max_margin": (0.3, 0.5, 0.7)}
  # The defaults: README's data/ folders, inside the repository.
  monkeypatch.chdir(tmp_path)
  default = module.settings_from({})
  assert (default.train, default.test) == ("folder:data/NCT-CRC-HE-100K",
                                           "folder:data/CRC-VAL-HE-7K")
  assert module.settings_from({"CFAL_HISTOLOGY_TRAIN": "tr"}).train == (
      f"folder:{tmp_path / 'tr'}")
  # What cannot work says so in one line.
  for environ, start in (
      ({"CFAL_HISTOLOGY_FLAGS": "--seed=3"}, "CFAL_HISTOLOGY_FLAGS: --seed "),
      ({"CFAL_HISTOLOGY_FLAGS": "--dataset=x"}, "CFAL_HISTOLOGY_FLAGS: "
       "--dataset is set by the study; use CFAL_HISTOLOGY_TRAIN"),
      ({"CFAL_HISTOLOGY_FLAGS": "gpus=4"}, "CFAL_HISTOLOGY_FLAGS: 'gpus=4' "),
      ({"CFAL_HISTOLOGY_FLAGS": "--train_steps=x"}, "CFAL_HISTOLOGY_FLAGS: "
       "--train_steps=x must be an integer"),
      ({**{k: str(tmp_path / "tr") for k in ENV[:2]},
        "CFAL_HISTOLOGY_GROUP_BY": "slide(\\d+)"},
       "CFAL_HISTOLOGY_GROUP_BY: --group_by='slide(\\\\d+)' has no named")):
    problem = module.check(module.settings_from(environ))
    assert problem.startswith(start) and "\n" not in problem, problem


@pytest.mark.slow
def test_the_study_runs_end_to_end_on_a_generated_tile_folder(
    tmp_path, monkeypatch):
  _clear(monkeypatch)
  train_root = _tiles(tmp_path / "NCT", range(4), per_slide=8, seed=0)
  test_root = _tiles(tmp_path / "VAL", range(20, 22), per_slide=3, seed=1)
  monkeypatch.setenv("CFAL_HISTOLOGY_TRAIN", str(train_root))
  monkeypatch.setenv("CFAL_HISTOLOGY_TEST", str(test_root))
  monkeypatch.setenv("CFAL_HISTOLOGY_GROUP_BY", r"slide(?P<group>\d+)")
  monkeypatch.setenv("CFAL_HISTOLOGY_FLAGS", TINY)
  monkeypatch.setenv("CFAL_CACHE_DIR", str(tmp_path / "cache"))
  module = experiments.module("histology")
  # The study as EXPERIMENT is, with one tuned head of two values (each
  # grid point is a run of its own; the runner's tuning has its own test).
  experiment = module.experiment(module.settings_from(os.environ),
                                 grids={"cfal": {"sigma": (30.0, 100.0)}})
  assert [r.flags for r in experiment.runs] == [
      r.flags for r in module.EXPERIMENT.runs]
  lines = []
  study = runner.Runner(python=sys.executable, runs_dir=tmp_path / "runs",
                        results_dir=tmp_path / "results", echo=lines.append)
  records = study.run_experiment(experiment, seeds=[0])

  assert [r["run"] for r in records] == list(module.HEADS)
  results = tmp_path / "results" / "histology"
  for name in module.HEADS:
    kept = results / name / "seed-0"
    assert (kept / "result.json").exists()
    report = json.loads((kept / "test.json").read_text())
    assert report["split"] == "test" and report["num_samples"] == sum(
        2 * (3 - c % 3) for c in range(len(CLASSES)))
  assert (results / "softmax" / "seed-0" / "test_posthoc_la.json").exists()
  for sigma in ("30.0", "100.0"):
    assert (results / "cfal" / "tune" / f"sigma={sigma}" / "seed-0" /
            "validation.json").exists()
  # Whole slides held out, and --imbalance_ratio=100 made the rest
  # long-tailed: ADI keeps its 3 x 8 tiles, TUM keeps 1.
  splits = json.loads((tmp_path / "runs" / "histology" / "cfal" / "seed-0" /
                       "splits.json").read_text())
  slides = {s: {e[2] for e in splits["splits"][s]["entries"]}
            for s in ("train", "validation", "unused")}
  assert len(slides["validation"]) == 1
  assert not slides["validation"] & (slides["train"] | slides["unused"])
  counts = report["long_tail"]["class_counts"]
  assert counts["ADI"] == 24 and counts["TUM"] == 1
  assert list(counts.values()) == sorted(counts.values(), reverse=True)

  monkeypatch.setattr(tables, "DOCS", tmp_path / "docs")
  runs = tables.load(experiment, results=tmp_path / "results")
  assert set(runs) == set(module.HEADS)
  text = module.section(runs, experiment)
  header = next(l for l in text.splitlines()
                if l.startswith("| head | seeds |"))
  for column in ("many-shot recall", "medium-shot recall",
                 "few-shot recall"):
    assert column in header
  for label, name, evaluation in module.ROWS:
    row = next(l for l in text.splitlines() if l.startswith(f"| {label} |"))
    value = json.loads((results / name / "seed-0" / f"{evaluation}.json")
                       .read_text())["long_tail"]["groups"]["few"]["recall"]
    assert f"| {value:.3f} |" in row
  assert "Groups: " in text and "- Test set, few-shot recall" in text
  assert ("validation split was held out by whole groups "
          "(`--group_by=slide(?P<group>\\d+)`)") in text
  assert "**sigma=" in text
  assert (tmp_path / "docs" / "histology.png").read_bytes()[:4] == b"\x89PNG"
