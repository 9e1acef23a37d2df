"""The run directory: one writer at a time, one model per directory.

`RunLock` holds an exclusive `flock` on `<logdir>/.lock` for the life of a
run. The kernel drops the lock when the process dies however it dies
(SIGKILL included), so a killed run never leaves a lock that blocks its
restart; the file itself only says who held it last. `flock` is local to
one machine (and NFS emulates it with fcntl locks), so two hosts sharing a
run directory must still be kept apart by the scheduler.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import os
import pathlib
import re
import socket

from cfal.errors import UsageError
from cfal.heads.registry import CHANGED_DEFAULTS
from cfal.training.config import TrainConfig

LOCK_NAME = ".lock"


class RunLock:
  """An exclusive lock on a run directory (a context manager).

  Raises:
    UsageError: on entry, if a live process holds the directory.
  """

  def __init__(self, logdir: str | os.PathLike):
    self.logdir = pathlib.Path(logdir)
    self._file = None
    self._created = False

  def __enter__(self) -> "RunLock":
    self._created = not self.logdir.exists()
    self.logdir.mkdir(parents=True, exist_ok=True)
    path = self.logdir / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    _lock_or_refuse(handle, self.logdir)
    handle.seek(0)
    handle.truncate()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    handle.write(f"cfal run pid {os.getpid()} on {socket.gethostname()} "
                 f"(since {started})\n")
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc_info) -> None:
    if self._file is None:
      return
    # A run refused before it wrote anything leaves no directory behind.
    if self._created and [p.name for p in self.logdir.iterdir()] == [
        LOCK_NAME]:
      (self.logdir / LOCK_NAME).unlink()
      self.logdir.rmdir()
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None


def check_not_locked(logdir: str | os.PathLike) -> None:
  """Raises `UsageError` if a live run holds `logdir`'s lock right now.

  A probe that takes nothing: the lock is tried and released at once (a
  run that starts in between is caught by its own `RunLock`). Creates no
  file or folder.
  """
  path = pathlib.Path(logdir) / LOCK_NAME
  if not path.exists():
    return
  # Opened for writing: on NFS an exclusive lock needs a writable file.
  handle = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
  _lock_or_refuse(handle, logdir)
  fcntl.flock(handle, fcntl.LOCK_UN)
  handle.close()


def _lock_or_refuse(handle, logdir) -> None:
  """Takes the exclusive lock on the open lock file `handle`, or closes it
  and raises `UsageError` naming the live run that holds it. Other
  failures (a filesystem without locks) propagate as they are."""
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise UsageError(f"{logdir} is in use by {holder}: wait for that run to "
                     f"finish or stop it, or use another --logdir.") from None


def write_atomically(path: pathlib.Path, text: str) -> None:
  """Writes `text` so that `path` is always either old or new, never half."""
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", encoding="utf-8") as handle:
    handle.write(text)
    handle.flush()
    os.fsync(handle.fileno())
  os.replace(tmp, path)


# Data fields that may change on resume: where the files are, and how many
# unreadable ones to tolerate, change neither the split nor the order.
_FREE_DATA_FIELDS = ("data_dir", "max_bad_fraction")
# Data fields that change which training examples the steps draw, but not
# the split: refused like the head and optimizer settings, unless
# `allow_config_change` (then recorded).
_TRAINING_DATA_FIELDS = ("sampler",)


def check_run_dir(logdir: pathlib.Path, config: TrainConfig) -> TrainConfig:
  """A run directory belongs to one run: refuse to resume it differently.

  A different model (head, backbone, embedding size), data split or order,
  seed, batch or precision is always refused. Different head or backbone
  options, optimizer settings or training sampler are refused too, naming
  each key and both values, unless `config.run.allow_config_change`. A different run length
  (which sets the learning-rate decay), validation cadence or patience is
  allowed: extending a run is common. Every such change is recorded in
  the returned config's `changes`, so config.json says what each part of
  the run used. Devices, step mode and checkpoint cadence change freely.

  Returns:
    `config`, with the run's earlier changes and this one recorded.
  """
  saved = logdir / "config.json"
  if not saved.exists():
    return config
  try:
    old = TrainConfig.load(logdir)
  except (ValueError, KeyError, TypeError) as error:
    raise UsageError(f"{saved} is not a readable cfal config ({error}): "
                     f"restore it, or use a new --logdir.") from None
  for field in ("backbone", "head", "embedding_dim"):
    a, b = getattr(old.model, field), getattr(config.model, field)
    if a != b:
      raise UsageError(f"{logdir} holds a run with {field}={a}, not {b}: "
                       f"use a new --logdir or the same {field}.")
  # The split, the long tail and the data order depend on these; changing
  # them on resume would mix validation examples into training.
  free = {name: None for name in _FREE_DATA_FIELDS + _TRAINING_DATA_FIELDS}
  old_data = dataclasses.replace(old.data, **free)
  new_data = dataclasses.replace(config.data, **free)
  for field in dataclasses.fields(old_data):
    a, b = getattr(old_data, field.name), getattr(new_data, field.name)
    if a != b:
      raise UsageError(f"{logdir} was trained with {field.name}={a}, not {b}:"
                       f" resume with the same data flags or use a new "
                       f"--logdir.")
  for field in ("seed", "batch_size", "mixed_precision"):
    a, b = getattr(old.run, field), getattr(config.run, field)
    if a != b:
      raise UsageError(f"{logdir} was trained with --{field}={a}, not {b}: "
                       f"resume with the same value or use a new --logdir.")
  changed = setting_changes(old, config)
  refused = {k: v for k, v in changed.items() if not k.startswith("run.")}
  if refused and not config.run.allow_config_change:
    listed = ", ".join(f"{key} {_show(a)} -> {_show(b)}"
                       for key, (a, b) in refused.items())
    # A run from before a default changed, resumed with no flag for it.
    moved = [f"--{k}={was:g}" for k, (was, now)
             in CHANGED_DEFAULTS.get(config.model.head, {}).items()
             if refused.get(f"head_args.{k}") == (was, now)]
    hint = (f"; cfal's default changed since it started: pass "
            f"{' '.join(moved)} to resume it as it was" if moved else "")
    raise UsageError(f"{logdir} was trained with other settings ({listed}"
                     f"{hint}): resume with the run's own flags, pass "
                     f"--allow_config_change to resume with these and record "
                     f"the change, or use a new --logdir.")
  changes = tuple(old.changes)
  if changed:
    changes += ({"step": _checkpointed_step(logdir), "changed": {
        key: [a, b] for key, (a, b) in changed.items()}},)
  return dataclasses.replace(config, changes=changes)


_UNSET = object()
_TRAINING_RUN_FIELDS = ("epochs", "train_steps", "eval_every",
                        "early_stopping_patience")


def setting_changes(old: TrainConfig, new: TrainConfig
                    ) -> dict[str, tuple[object, object]]:
  """Settings that change what training does, by key ("head_args.margin",
  "optimizer.learning_rate", "data.sampler", "run.train_steps"): head and
  backbone options, the optimizer, the sampler, the run's length and its
  validation cadence."""
  changed: dict[str, tuple[object, object]] = {}
  for group in ("head_args", "backbone_args"):
    a, b = getattr(old.model, group), getattr(new.model, group)
    for key in sorted(set(a) | set(b)):
      if a.get(key, _UNSET) != b.get(key, _UNSET):
        changed[f"{group}.{key}"] = (a.get(key), b.get(key))
  for field in dataclasses.fields(old.optimizer):
    a = getattr(old.optimizer, field.name)
    b = getattr(new.optimizer, field.name)
    if a != b:
      changed[f"optimizer.{field.name}"] = (a, b)
  for name in _TRAINING_DATA_FIELDS:
    a, b = getattr(old.data, name), getattr(new.data, name)
    if a != b:
      changed[f"data.{name}"] = (a, b)
  # The run's length sets the learning-rate schedule's decay; the
  # validation cadence and patience set the best-model and early-stopping
  # books.
  for name in _TRAINING_RUN_FIELDS:
    a, b = getattr(old.run, name), getattr(new.run, name)
    if a != b:
      changed[f"run.{name}"] = (a, b)
  return changed


def _show(value) -> str:
  return "unset" if value is None else str(value)


def _checkpointed_step(logdir: pathlib.Path) -> int | None:
  """The step of the run's latest checkpoint, from its state file."""
  path = latest_checkpoint(logdir / "checkpoints", must_exist=False)
  match = re.search(r"ckpt-(\d+)$", path or "")
  return int(match.group(1)) if match else None


def latest_checkpoint(folder: pathlib.Path, *, must_exist: bool = True
                      ) -> str | None:
  """The prefix of the newest checkpoint `folder`'s state file names (what
  `tf.train.latest_checkpoint` answers, read without TensorFlow); None if
  there is none, or, with `must_exist`, if its index file is missing."""
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
  if must_exist and not os.path.exists(f"{prefix}.index"):
    return None
  return str(prefix)
