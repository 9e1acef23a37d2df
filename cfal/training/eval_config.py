"""What eval.py is asked to evaluate, and the checks that need no TensorFlow.

`check_eval_config` runs before TensorFlow loads: a missing run, an unknown
split, a checkpoint or SavedModel that is not there are usage errors at
once. `evaluate.py` does the work.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib

from cfal.data.config import has_test_split
from cfal.errors import UsageError
from cfal.heads.registry import LINEAR_CLASSIFIERS, LOGIT_SCORES
from cfal.training.config import TrainConfig
from cfal.training.run_dir import latest_checkpoint

SPLITS = ("test", "validation")
CHECKPOINTS = ("latest", "best")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate.

  Attributes:
    logdir: the run directory train.py wrote.
    split: "test" (the dataset's own test set) or "validation".
    checkpoint: "latest", "best", or a checkpoint path.
    saved_model: evaluate this exported SavedModel instead of a checkpoint.
    batch_size: global eval batch.
    gpus, cpu_replicas: devices, as for training.
    output_dir: where results go (default `<logdir>/eval/<split>/<name>`,
      the name saying which weights: `ckpt-842`, `best-ckpt-700`,
      `saved_model-export`, and which post-hoc correction:
      `ckpt-842+tau_norm_1`).
    figure_formats: file formats of the pictures (png, pdf, svg).
    dpi: resolution of the raster pictures.
    logit_adjustment: predict with `f_j(x) - tau log pi_j` (Menon et al.
      2021, post-hoc), tau this value, pi the training class priors; None
      for plain predictions. Heads whose scores are logits only.
    tau_normalization: predict with the linear classifier's weight rows
      rescaled to `w_j / ||w_j||^tau` and no bias (Kang et al. 2020), tau
      this value; None for the trained classifier. Linear-classifier
      heads only.
  """

  logdir: str
  split: str = "test"
  checkpoint: str = "latest"
  saved_model: str | None = None
  batch_size: int = 256
  gpus: int = 0
  cpu_replicas: int = 0
  output_dir: str | None = None
  figure_formats: tuple[str, ...] = ("png",)
  dpi: int = 100
  logit_adjustment: float | None = None
  tau_normalization: float | None = None


def load_run_config(logdir: str | pathlib.Path) -> TrainConfig:
  """The run's config, or a one-line error saying what is wrong."""
  path = pathlib.Path(logdir)
  if not path.is_dir():
    raise UsageError(f"Run directory {path} does not exist; pass the "
                     f"--logdir that training wrote.")
  if not (path / "config.json").exists():
    empty = not any(path.iterdir())
    raise UsageError(f"{path} is {'empty' if empty else 'not a cfal run'}: "
                     f"it has no config.json (training writes one).")
  try:
    return TrainConfig.load(path)
  except (ValueError, KeyError, TypeError) as error:
    raise UsageError(f"{path / 'config.json'} is not a cfal config: "
                     f"{error}") from None


def check_split(run: TrainConfig, split: str) -> None:
  """Refuses a split the run's data cannot have, before any data is read."""
  if split not in SPLITS:
    raise UsageError(f"Unknown --split={split!r}; choose test or "
                     f"validation.")
  if split == "test" and not has_test_split(run.data.name,
                                            run.data.test_dataset):
    raise UsageError(f"{run.data.name} has no test split (train with "
                     f"--test_dataset=folder:... or csv:... for an external "
                     f"one); use --split=validation.")


def checkpoint_path(logdir: pathlib.Path, which: str) -> str:
  """"latest", "best" or a path -> the checkpoint prefix to read."""
  if which in CHECKPOINTS:
    folder = logdir / "checkpoints"
    if which == "best":
      folder = folder / "best"
    path = latest_checkpoint(folder)
    if path is None:
      raise UsageError(f"{logdir} has no {which} checkpoint in {folder}; "
                       f"train first (or pass --checkpoint=PATH).")
    return path
  if "://" not in which and not os.path.exists(which + ".index"):
    raise UsageError(f"--checkpoint={which}: no such checkpoint (expected "
                     f"{which}.index); use latest, best or a checkpoint "
                     f"path.")
  return which


def _local_exists(path: str) -> bool:
  # Remote paths (gs://...) are left to TensorFlow's file system.
  return "://" in path or os.path.exists(path)


def check_saved_model(path: str, exists=_local_exists) -> None:
  """Raises `UsageError` unless `path` holds a saved_model.pb (`exists`:
  the file test, `tf.io.gfile.exists` once TensorFlow is loaded)."""
  if not exists(os.path.join(path, "saved_model.pb")):
    raise UsageError(f"--saved_model={path} is not a SavedModel (no "
                     f"saved_model.pb); training exports one to "
                     f"<logdir>/export.")


def output_name(logdir: pathlib.Path, config: EvalConfig,
                checkpoint: str | None) -> str:
  """The folder under `eval/<split>/` that says which weights were
  evaluated, so evaluations of different checkpoints and of the SavedModel
  never overwrite each other: `ckpt-842`, `best-ckpt-700` (from
  checkpoints/best/), `saved_model-export`; weights from outside the run
  keep the last three parts of their path (`external-runB-checkpoints-
  ckpt-20`). Post-hoc corrections add `posthoc_suffix`
  (`ckpt-842+logit_adjusted_tau1`), so the plain evaluation stays."""
  if config.saved_model:
    name = "saved_model-" + _path_name(pathlib.Path(config.saved_model),
                                       logdir)
  else:
    name = _path_name(pathlib.Path(checkpoint), logdir / "checkpoints")
  return name + posthoc_suffix(config)


def posthoc_suffix(config: EvalConfig) -> str:
  """What the output folder's name adds for post-hoc corrections, so they
  never overwrite the plain evaluation: `+tau_norm_1`,
  `+logit_adjusted_tau1` (both: in that order, the order they apply)."""
  suffix = ""
  if config.tau_normalization is not None:
    suffix += f"+tau_norm_{config.tau_normalization:g}"
  if config.logit_adjustment is not None:
    suffix += f"+logit_adjusted_tau{config.logit_adjustment:g}"
  return suffix


_POSTHOC = (("tau_normalization", LINEAR_CLASSIFIERS, "a linear classifier"),
            ("logit_adjustment", LOGIT_SCORES, "scores that are logits"))


def check_posthoc(config: EvalConfig, run: TrainConfig | None = None
                  ) -> None:
  """Refuses a bad tau and, given the run, a post-hoc correction its head
  cannot take, from the head's name alone (`cfal.heads.registry`)."""
  for flag, heads, what in _POSTHOC:
    tau = getattr(config, flag)
    if tau is None:
      continue
    if not math.isfinite(tau) or tau < 0:
      raise UsageError(f"--{flag}={tau:g}: tau must be a finite number "
                       f">= 0.")
    head = run.model.head if run is not None else None
    if head is not None and head not in heads:
      why = ("its weights are unit vectors already" if head in LOGIT_SCORES
             else "its scores are Gaussian affinities, not logits")
      raise UsageError(
          f"--{flag} is for heads with {what} ({', '.join(sorted(heads))});"
          f" this run's head is {head} ({why}).")


def _path_name(path: pathlib.Path, inside: pathlib.Path) -> str:
  try:
    parts = path.resolve().relative_to(inside.resolve()).parts
  except ValueError:
    parts = ("external", *path.resolve().parts[-3:])
  return "-".join(parts) or "model"


def find_report(path: str | os.PathLike, split: str) -> pathlib.Path:
  """The report.json that `path` names, for --compare.

  `path` is an evaluation's own folder (`<run>/eval/test/best-ckpt-700`),
  or a run, whose newest evaluation of `split` is taken (one folder per
  weights evaluated; the single `eval/<split>/report.json` of runs
  evaluated before that layout counts too).
  """
  path = pathlib.Path(path)
  if (path / "report.json").exists():
    return path / "report.json"
  folder = path / "eval" / split
  found = sorted([*folder.glob("*/report.json"),
                  *folder.glob("report.json")],
                 key=lambda p: p.stat().st_mtime)
  if not found:
    raise UsageError(f"{path} has no evaluation of the {split} split: "
                     f"evaluate it first (--logdir={path} --split={split}).")
  return found[-1]


def check_eval_config(config: EvalConfig) -> TrainConfig:
  """Every refusal that needs no TensorFlow; returns the run's config."""
  check_posthoc(config)
  run = load_run_config(config.logdir)
  check_split(run, config.split)
  check_posthoc(config, run)
  if config.saved_model:
    check_saved_model(config.saved_model)
  else:
    checkpoint_path(pathlib.Path(config.logdir), config.checkpoint)
  return run
