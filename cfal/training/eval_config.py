"""What eval.py is asked to evaluate, and the checks that need no TensorFlow.

`check_eval_config` runs before TensorFlow loads: a missing run, an unknown
split, a checkpoint or SavedModel that is not there are usage errors at
once. `evaluate.py` does the work.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

from cfal.data.config import has_test_split
from cfal.errors import UsageError
from cfal.training.config import TrainConfig

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
      `saved_model-export`).
    figure_formats: file formats of the pictures (png, pdf, svg).
    dpi: resolution of the raster pictures.
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


def load_run_config(logdir: str | pathlib.Path) -> TrainConfig:
  """The run's config, or a one-line error saying what is wrong."""
  path = pathlib.Path(logdir)
  if not path.is_dir():
    raise UsageError(f"Run directory {path} does not exist; pass the "
                     f"--logdir that train.py wrote.")
  if not (path / "config.json").exists():
    empty = not any(path.iterdir())
    raise UsageError(f"{path} is {'empty' if empty else 'not a cfal run'}: "
                     f"it has no config.json (train.py writes one).")
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
  if split == "test" and not has_test_split(run.data.name):
    raise UsageError(f"{run.data.name} has no test split; use "
                     f"--split=validation.")


def latest_checkpoint(folder: pathlib.Path) -> str | None:
  """The prefix of the newest checkpoint `folder`'s state file names, if
  its files are there (what `tf.train.latest_checkpoint` answers)."""
  state = folder / "checkpoint"
  if not state.exists():
    return None
  match = re.search(r'^model_checkpoint_path: "(.*)"$', state.read_text(),
                    re.MULTILINE)
  if match is None:
    return None
  prefix = pathlib.Path(match.group(1))
  if not prefix.is_absolute():
    prefix = folder / prefix
  return str(prefix) if os.path.exists(f"{prefix}.index") else None


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


def check_saved_model(path: str) -> None:
  if "://" not in path and not os.path.exists(
      os.path.join(path, "saved_model.pb")):
    raise UsageError(f"--saved_model={path} is not a SavedModel (no "
                     f"saved_model.pb); train.py exports one to "
                     f"<logdir>/export.")


def output_name(logdir: pathlib.Path, config: EvalConfig,
                checkpoint: str | None) -> str:
  """The folder under `eval/<split>/` that says which weights were
  evaluated, so evaluations of different checkpoints and of the SavedModel
  never overwrite each other: `ckpt-842`, `best-ckpt-700` (from
  checkpoints/best/), `saved_model-export`."""
  if config.saved_model:
    return "saved_model-" + (pathlib.Path(config.saved_model.rstrip("/")).name
                             or "model")
  path = pathlib.Path(checkpoint)
  try:
    inside = path.resolve().relative_to((logdir / "checkpoints").resolve())
    return "-".join(inside.parts)
  except ValueError:
    return path.name


def check_eval_config(config: EvalConfig) -> TrainConfig:
  """Every refusal that needs no TensorFlow; returns the run's config."""
  run = load_run_config(config.logdir)
  check_split(run, config.split)
  if config.saved_model:
    check_saved_model(config.saved_model)
  else:
    checkpoint_path(pathlib.Path(config.logdir), config.checkpoint)
  return run
