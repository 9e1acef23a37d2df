"""Histology: CFAL against the long-tail baselines on real H&E tiles.

Experiment 3's question (`studies/long_tail`) on a histology folder: the
heads softmax (also evaluated with post-hoc logit adjustment),
logit-adjusted loss, class-balanced focal, LDAM-DRW and CFAL, three seeds,
scored on an external test set with eval.py's many/medium/few-shot
recall. One command, with NCT-CRC-HE-100K and CRC-VAL-HE-7K (Kather et
al. 2019, Zenodo record 1214456) unpacked under data/ as README says:

    .venv/bin/python studies/run.py histology

Other locations and data, read from the environment when the module loads:

* `CFAL_HISTOLOGY_TRAIN`: the training tiles (default
  data/NCT-CRC-HE-100K): a folder with one subfolder per class, or
  `csv:<manifest>` (columns path,label[,group]). Relative paths are taken
  from the current directory.
* `CFAL_HISTOLOGY_TEST`: the external test set, the same classes (default
  data/CRC-VAL-HE-7K).
* `CFAL_HISTOLOGY_GROUP_BY`: train.py's `--group_by`, so that the
  validation split (which tunes the heads) holds out whole slides: a
  regular expression with `(?P<group>...)` searched in each tile's path,
  e.g. `TCGA-(?P<group>..-....)` for TCGA-style names, or `csv` for a
  manifest's group column. NCT-CRC-HE-100K's file names carry no slide
  id (`ADI-AAAFLCLY.tif`), so its validation split is by tile (tiles of
  one slide on both sides, an optimistic score used only to pick
  hyper-parameters); the test set, CRC-VAL-HE-7K, is other patients.
* `CFAL_HISTOLOGY_FLAGS`: more train.py flags for every run, e.g.
  `--gpus=4 --batch_size=256`, or `--imbalance_ratio=1` for tiles that
  are long-tailed already. They change the runs' commands, so results
  kept with other flags are refused, not reused: keep each setting's
  results apart with `studies/run.py --results_dir=...`.

Without the data, `studies/run.py histology` stops at once with one line
saying where to put it; `studies/run.py` (every experiment) skips this one
with that line.

The network and budget are the README recipe's (`flags/nct_crc_he/
common.flags`: ImageNet ResNet50 at 224 px, 128-d embedding, batch 64,
Adam 1e-4 with the head at 1e-3, body frozen for 500 steps, flips and
rotations), with `--imbalance_ratio=100` making the nearly balanced NCT
set long-tailed as in the CFAL paper's question: class c (alphabetical:
ADI ... TUM) keeps `n_max * 100^(-c/8)` tiles, capped at what it has,
about 25,800 tiles from ADI's 9,366 down to TUM's 129 (the validation
tenth is taken out first). Every run trains 2,000 steps (about five
epochs of that set) and the last checkpoint is evaluated; LDAM-DRW
re-weights from step 1,600 (80%). Each head's main hyper-parameter is
tuned as in experiment 3 (its three values, seed 0, validation balanced
accuracy). In all 27 runs (4 x 3 tuning points + 5 x 3 seeds) of 2,000
steps of batch 64.

Untested here (no GPU; the test trains it at a tiny budget on generated
tiles): the run times, the memory a 224 px ResNet50 at batch 64 needs,
and `--gpus=N` with this study.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
from typing import Mapping

from studies import experiments
from studies.runner import ROOT, Experiment, Grid, Run

ENV_TRAIN = "CFAL_HISTOLOGY_TRAIN"
ENV_TEST = "CFAL_HISTOLOGY_TEST"
ENV_GROUP_BY = "CFAL_HISTOLOGY_GROUP_BY"
ENV_FLAGS = "CFAL_HISTOLOGY_FLAGS"
DEFAULT_TRAIN = "data/NCT-CRC-HE-100K"
DEFAULT_TEST = "data/CRC-VAL-HE-7K"

COMMON = "studies/histology/common.flags"
IMBALANCE_RATIO = 100
TRAIN_STEPS = 2000
DRW_FROM = 0.8        # LDAM-DRW re-weights from this fraction of the steps
# Flags the study sets itself (the runner: seed and logdir).
OWN_FLAGS = ("dataset", "test_dataset", "group_by", "seed", "logdir")

TEST = {"test": ("--split=test",)}
POSTHOC = {**TEST, "test_posthoc_la": ("--split=test", "--logit_adjustment=1")}

# The heads of experiment 3 that this study compares, with the hyper-
# parameters of their flags/fashion_mnist_lt/ recipes; the grids are
# experiment 3's (studies/long_tail/experiment.py HEADS).
HEADS = {
    "cfal": {"head": "cfal", "sigma": 100, "margin": 0.5, "gamma": 2,
             "beta": 0.999},
    "softmax": {"head": "softmax"},
    "logit_adjusted": {"head": "logit_adjusted", "tau": 1},
    "ldam_drw": {"head": "ldam", "scale": 30, "max_margin": 0.5},
    "cb_focal": {"head": "focal", "gamma": 2, "beta": 0.999},
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """Where the data is and what else every run gets.

  Attributes:
    train, test: train.py's --dataset and --test_dataset values
      (folder:<path> or csv:<path>; paths relative to the repository
      when inside it).
    group_by: train.py's --group_by, or None (a split by tile).
    flags: more train.py flags for every run (`CFAL_HISTOLOGY_FLAGS`).
    problem: why the settings cannot run (one line), or None.
  """

  train: str
  test: str
  group_by: str | None = None
  flags: Mapping[str, object] = dataclasses.field(default_factory=dict)
  problem: str | None = None


def settings_from(environ: Mapping[str, str]) -> Settings:
  """The settings the environment variables give (see the docstring)."""
  flags, problem = _parse_flags(environ.get(ENV_FLAGS, ""))
  return Settings(
      train=_dataset(environ.get(ENV_TRAIN), DEFAULT_TRAIN),
      test=_dataset(environ.get(ENV_TEST), DEFAULT_TEST),
      group_by=environ.get(ENV_GROUP_BY) or None, flags=flags,
      problem=problem)


def _dataset(value: str | None, default: str) -> str:
  """folder:<path> or csv:<path>, the path relative to the repository when
  it lies inside it (so kept commands read the same on every machine)."""
  if not value:
    return f"folder:{default}"
  kind, path = "folder", value
  for prefix in ("folder:", "csv:"):
    if value.startswith(prefix):
      kind, path = prefix[:-1], value[len(prefix):]
  resolved = pathlib.Path(os.path.abspath(os.path.expanduser(path)))
  try:
    shown = str(resolved.relative_to(ROOT))
  except ValueError:
    shown = str(resolved)
  return f"{kind}:{shown}"


def _parse_flags(text: str) -> tuple[dict, str | None]:
  """`--name=value --flag ...` -> ({name: value, flag: True}, problem)."""
  flags = {}
  try:
    tokens = shlex.split(text)
  except ValueError as error:
    return {}, f"{ENV_FLAGS}={text!r} cannot be split into flags ({error})."
  for token in tokens:
    match = re.fullmatch(r"--([A-Za-z_]\w*)(?:=(.*))?", token, re.S)
    if match is None:
      return {}, (f"{ENV_FLAGS}: {token!r} is not a train.py flag; write "
                  f"--name=value (or --name for a boolean), separated by "
                  f"spaces.")
    name, value = match.group(1), match.group(2)
    if name in OWN_FLAGS:
      where = {"dataset": ENV_TRAIN, "test_dataset": ENV_TEST,
               "group_by": ENV_GROUP_BY}.get(name)
      return {}, (f"{ENV_FLAGS}: --{name} is set by the study"
                  + (f"; use {where} instead." if where else
                     " runner (studies/run.py --seeds for seeds)."))
    flags[name] = True if value is None else value
  if "train_steps" in flags:
    try:
      if int(flags["train_steps"]) < 2:
        raise ValueError
    except ValueError:
      return {}, (f"{ENV_FLAGS}: --train_steps={flags['train_steps']} must "
                  f"be an integer >= 2 (LDAM-DRW re-weights from 80% of "
                  f"it).")
  return flags, None


def check(settings: Settings) -> str | None:
  """None when the data is there, else one line saying what to do."""
  if settings.problem:
    return settings.problem
  for value, env, default, what in (
      (settings.train, ENV_TRAIN, DEFAULT_TRAIN, "training"),
      (settings.test, ENV_TEST, DEFAULT_TEST, "test")):
    kind, path = value.split(":", 1)
    if (ROOT / path).is_dir() if kind == "folder" else (
        (ROOT / path).is_file()):
      continue
    if value == f"folder:{default}":
      return (f"no {what} tiles at {default}: unpack NCT-CRC-HE-100K to "
              f"{DEFAULT_TRAIN} and CRC-VAL-HE-7K to {DEFAULT_TEST} (Zenodo "
              f"record 1214456), or set {ENV_TRAIN} and {ENV_TEST} to your "
              f"folders (see studies/histology/experiment.py).")
    return (f"{env}: no {'manifest' if kind == 'csv' else 'folder'} "
            f"{path}; point it at the {what} tiles (a folder with one "
            f"subfolder per class, or csv:<manifest>).")
  if settings.group_by and settings.group_by != "csv":
    # pylint: disable=import-outside-toplevel
    from cfal.data.config import compile_group_pattern
    try:
      compile_group_pattern(settings.group_by)
    except ValueError as error:
      return f"{ENV_GROUP_BY}: {error}"
  return None


def _run(name: str, settings: Settings, grids: Mapping) -> Run:
  steps = int(settings.flags.get("train_steps", TRAIN_STEPS))
  head = dict(HEADS[name])
  if name == "ldam_drw":
    head["reweight_from_step"] = int(round(DRW_FROM * steps))
  data = {"dataset": settings.train, "test_dataset": settings.test}
  if settings.group_by:
    data["group_by"] = settings.group_by
  grid = grids.get(name)
  return Run(name, (COMMON,),
             flags={**data, "imbalance_ratio": IMBALANCE_RATIO,
                    "train_steps": TRAIN_STEPS, **head, **settings.flags},
             evals=POSTHOC if name == "softmax" else TEST,
             grid=Grid(grid) if grid else None)


def experiment(settings: Settings,
               grids: Mapping[str, Mapping] | None = None) -> Experiment:
  """The study on `settings`' data.

  Args:
    settings: the data and extra flags.
    grids: head -> {flag: values} tuned before its seeds train (default
      experiment 3's grids for these heads).
  """
  if grids is None:
    heads = experiments.module("long_tail").HEADS
    grids = {name: heads[name][2] for name in HEADS}
  return Experiment(
      name="histology",
      title=("Histology (NCT-CRC-HE-100K, tested on CRC-VAL-HE-7K): CFAL "
             "against the long-tail baselines"),
      runs=tuple(_run(name, settings, grids) for name in HEADS),
      check=lambda: check(settings))


EXPERIMENT = experiment(settings_from(os.environ))


# -- RESULTS.md ---------------------------------------------------------------

# Rows of the table: (label, run, evaluation).
ROWS = (("softmax", "softmax", "test"),
        ("softmax + post-hoc LA", "softmax", "test_posthoc_la"),
        ("class-balanced focal", "cb_focal", "test"),
        ("logit-adjusted loss", "logit_adjusted", "test"),
        ("LDAM-DRW", "ldam_drw", "test"),
        ("CFAL", "cfal", "test"))


# RESULTS.md's words while no run is kept.
NOT_RUN = (
    "It needs the NCT-CRC-HE-100K and CRC-VAL-HE-7K tile folders, which "
    "the machine this study ran on does not have and cannot download "
    "(and 27 ResNet50 runs at 224 px are far beyond its 2 CPU cores); "
    "README.md's [long-tail study on these tiles]"
    "(README.md#the-long-tail-study-on-these-tiles) says where to put them. "
    "The same command runs end to end on a generated folder of slide tiles "
    "in `tests/studies/test_histology.py`.")


def section(runs, experiment) -> str:  # pylint: disable=redefined-outer-name
  """RESULTS.md's text for this experiment (see studies/results.py)."""
  # pylint: disable=import-outside-toplevel
  from studies import tables
  results = next(iter(runs.values())).folder.parents[1]
  # What the kept runs were trained on, from their own records.
  first = runs.get("cfal") or next(iter(runs.values()))
  record = first.records[first.seeds[0]]
  flags = record["flags"]
  counts = first.reports[first.seeds[0]]["long_tail"]["class_counts"]
  split = (f"held out by whole groups (`--group_by={flags['group_by']}`)"
           if flags.get("group_by") else
           "held out tile by tile (the file names carry no slide id: "
           "tiles of one slide are on both sides, so validation scores "
           "are optimistic; they only pick hyper-parameters)")
  text = [
      f"Training tiles `{flags['dataset']}`, made long-tailed with "
      f"`--imbalance_ratio={flags['imbalance_ratio']}` (class c keeps "
      f"`n_max * R^(-c/(C-1))`, capped at what it has) after the "
      f"validation split was {split}. Training tiles per class: "
      + ", ".join(f"{name} {int(n):,}" for name, n in counts.items())
      + f". Test set `{flags['test_dataset']}`, other patients. Every head "
      f"trains the same network for the same {flags['train_steps']} "
      f"steps (`{COMMON}`, the recipe of `flags/nct_crc_he/`) and the "
      f"last checkpoint is evaluated; post-hoc logit adjustment is the "
      f"softmax runs evaluated again with `eval.py --logit_adjustment=1`. "
      f"The {first.name} runs' command (seed {first.seeds[0]}):",
      "", f"    {' '.join(record['train_command'])}",
  ]
  tuned = tables.tuning_rows(experiment, results)
  if tuned:
    text += ["", "Tuning: each head's main hyper-parameter, seed 0, scored "
             "by balanced accuracy on the validation split (chosen value in "
             "bold).", "",
             tables.table(["head", "validation balanced accuracy per value"],
                          tuned, right_from=2)]
  cells = tables.long_tail_cells(runs, ROWS)
  if cells:
    rule = next(iter(cells.values()))["rule"]
    picture = tables.group_bars(
        cells, "Histology: test recall by class group (mean ± sd over "
        "seeds)", "histology.png")
    text += ["", "### Test set", "", tables.long_tail_table(cells), "",
             f"Groups: {rule}.", "",
             f"![Test recall by class group]({picture})", "",
             "### CFAL against the best baseline", "",
             "Paired by seed; the answer follows the paired t-test's 95% "
             "interval of the per-seed differences. The best baseline is "
             "picked on the test numbers themselves, which favours the "
             "baselines.", "", *tables.verdicts(cells, "Test set")]
  return "\n".join(text)
