"""The study runner: train.py and eval.py runs that are kept and skipped.

A study is a set of experiments (`studies/<experiment>/experiment.py`);
an experiment is a list of `Run`s, each a set of flagfiles and flags that
train.py trains once per seed and eval.py evaluates. Everything goes
through the two programs a user runs, in subprocesses, so the study
measures the product itself.

What is kept, so that a study can stop at any moment and go on in another
session:

* `studies/runs/<experiment>/<run>/seed-<s>/`: the run directory (git
  ignores it). A run cut short resumes from its last checkpoint when the
  runner starts it again (train.py resumes by itself).
* `studies/results/<experiment>/<run>/seed-<s>/`: what a finished run
  leaves for RESULTS.md and is committed: `result.json` (the commands,
  their wall times, the machine, the commit) and one `<eval>.json` per
  evaluation (eval.py's report.json), plus the files an experiment asks to
  keep (pictures). `result.json` is written last: a run with one is done
  and is skipped on rerun.

Tuning: a `Run` may carry a `Grid`, the hyper-parameter values it tries
with one seed, scored on the validation split only; the best value of the
grid's metric then trains every seed. The grid points are runs like any
other (kept under `<run>/tune/<point>/`), so a tuning cut short resumes
too, and the choice is recorded with the runs that used it.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import hashlib
import itertools
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Mapping, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
STUDIES = ROOT / "studies"
RUNS = STUDIES / "runs"
RESULTS = STUDIES / "results"

Printer = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Grid:
  """Hyper-parameter values a run tries before its seeds train.

  Attributes:
    values: train.py flag -> the values to try; every combination is one
      point (e.g. {"margin": (0.2, 0.4)}).
    metric: the report key that picks the best point (higher is better),
      read from the validation-split evaluation.
    seed: the one seed the points train with.
  """

  values: Mapping[str, Sequence]
  metric: str = "balanced_accuracy"
  seed: int = 0

  def points(self) -> list[dict]:
    names = list(self.values)
    return [dict(zip(names, combo)) for combo in
            itertools.product(*(self.values[n] for n in names))]


@dataclasses.dataclass(frozen=True)
class Run:
  """One cell of an experiment: trained once per seed, then evaluated.

  Attributes:
    name: the cell's name (a folder name: letters, digits, -, _).
    flagfiles: train.py flagfiles, relative to the repository.
    flags: more train.py flags, name -> value (after the flagfiles, so
      they win).
    evals: evaluation name -> eval.py flags; each is kept as
      `<name>.json`. Default: the test split at the latest checkpoint.
    keep: files of the first evaluation's output folder to keep as well
      (e.g. "embeddings.png").
    grid: hyper-parameters tuned on the validation split first.
    tuned_like: the name of another run of the experiment whose grid
      choice this run uses (tuned once, e.g. at one imbalance ratio, and
      applied to another).
    seeds: the seeds of this run, instead of the experiment's (e.g. one
      pre-training that every seed of the later runs starts from).
    run_dir_needed: later runs read this run's directory (`--pretrained=`):
      when its result is kept but the directory is gone (a fresh clone),
      it trains again.
  """

  name: str
  flagfiles: tuple[str, ...] = ()
  flags: Mapping[str, object] = dataclasses.field(default_factory=dict)
  evals: Mapping[str, tuple[str, ...]] = dataclasses.field(
      default_factory=lambda: {"test": ("--split=test",)})
  keep: tuple[str, ...] = ()
  grid: Grid | None = None
  tuned_like: str | None = None
  seeds: tuple[int, ...] | None = None
  run_dir_needed: bool = False


class Unavailable(RuntimeError):
  """An experiment cannot run on this machine (its data is missing); the
  message is one line saying what to do."""


class StaleResult(RuntimeError):
  """A kept result does not match what the run would do now."""


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A named list of runs, each trained with every seed.

  Attributes:
    check: called before anything runs; returns None when the experiment
      can run here, else one line saying what is missing and how to
      provide it (data the user downloads, for instance).
  """

  name: str
  title: str
  runs: tuple[Run, ...]
  seeds: tuple[int, ...] = (0, 1, 2)
  check: Callable[[], str | None] | None = None

  def problem(self) -> str | None:
    """None when the experiment can run here, else what to do (one line)."""
    return self.check() if self.check is not None else None

  def seeds_of(self, run: Run,
               asked: Sequence[int] | None = None) -> tuple[int, ...]:
    """The seeds `run` trains with: its own, else those asked for, else
    the experiment's."""
    if run.seeds is not None:
      return run.seeds
    return tuple(asked) if asked is not None else self.seeds

  def run(self, name: str) -> Run:
    for run in self.runs:
      if run.name == name:
        return run
    raise KeyError(f"experiment {self.name} has no run {name!r}; it has "
                   f"{', '.join(r.name for r in self.runs)}")


def flag_args(flags: Mapping[str, object]) -> list[str]:
  """{"margin": 0.5, "deterministic": True} -> ["--margin=0.5", ...]."""
  args = []
  for name, value in flags.items():
    if isinstance(value, bool):
      args.append(f"--{name}" if value else f"--no{name}")
    else:
      args.append(f"--{name}={value}")
  return args


def point_name(point: Mapping[str, object]) -> str:
  """A grid point as a folder name: margin=0.5,scale=30."""
  return ",".join(f"{k}={v}" for k, v in point.items())


@dataclasses.dataclass
class Runner:
  """Executes runs through train.py and eval.py, keeping what finished.

  Attributes:
    python: the interpreter to run train.py and eval.py with.
    runs_dir, results_dir: where run directories and kept results go.
    echo: where progress lines go.
    dry_run: print the commands instead of running them.
    device_flags: train.py/eval.py flags that say where runs execute
      (`--gpus=4`, `--strategy=multi_worker`, ...), added to every
      command; a kept result made on other devices still counts.
  """

  python: str = sys.executable
  runs_dir: pathlib.Path = RUNS
  results_dir: pathlib.Path = RESULTS
  echo: Printer = print
  dry_run: bool = False
  device_flags: tuple[str, ...] = ()

  # -- one experiment -------------------------------------------------------

  def run_experiment(self, experiment: Experiment,
                     seeds: Sequence[int] | None = None,
                     only: Sequence[str] | None = None) -> list[dict]:
    """Every run of `experiment` (or those `only` names: names or glob
    patterns such as "r100_*"), every seed.

    Returns:
      The `result.json` records of the runs, finished now or before.

    Raises:
      Unavailable: the experiment cannot run here (checked before any run
        starts; a dry run only prints the problem).
    """
    problem = experiment.problem()
    if problem is not None:
      if not self.dry_run:
        raise Unavailable(problem)
      self.echo(f"note: {problem}")
    records = []
    for run in experiment.runs:
      # A run others read (a pre-training) runs whatever `only` picks.
      if (only and not run.run_dir_needed
          and not any(fnmatch.fnmatchcase(run.name, o) for o in only)):
        continue
      chosen = self.tune(experiment, (experiment.run(run.tuned_like)
                                      if run.tuned_like else run))
      for seed in experiment.seeds_of(run, seeds):
        record = self.execute(experiment.name, run, seed, extra=chosen)
        if record is not None:
          records.append(record)
    return records

  def tune(self, experiment: Experiment, run: Run) -> dict:
    """The grid point with the best validation metric ({} without a grid);
    trains the points not trained yet. The first of tied points wins. A
    dry run with points not trained yet gives placeholders."""
    if run.grid is None:
      return {}
    scored = []
    for point in run.grid.points():
      tuned = dataclasses.replace(
          run, flags={**run.flags, **point}, grid=None, keep=(),
          evals={"validation": ("--split=validation",)})
      record = self.execute(experiment.name, tuned, run.grid.seed,
                            folder=f"{run.name}/tune/{point_name(point)}")
      if record is None:      # dry run
        continue
      report = json.loads((self._results(
          experiment.name, f"{run.name}/tune/{point_name(point)}",
          run.grid.seed) / "validation.json").read_text())
      scored.append((float(report[run.grid.metric]), point))
    if self.dry_run and len(scored) < len(run.grid.points()):
      return {name: "<tuned from " + ",".join(str(v) for v in values) + ">"
              for name, values in run.grid.values.items()}
    best_score, best = max(scored, key=lambda item: item[0])
    self.echo(f"{experiment.name}/{run.name}: tuned on validation "
              f"{run.grid.metric}: {point_name(best)} "
              f"({best_score:.4f}; tried "
              + ", ".join(f"{point_name(p)}: {s:.4f}" for s, p in scored)
              + ")")
    return best

  # -- one run ---------------------------------------------------------------

  def _runs(self, experiment: str, folder: str, seed: int) -> pathlib.Path:
    return self.runs_dir / experiment / folder / f"seed-{seed}"

  def _results(self, experiment: str, folder: str,
               seed: int) -> pathlib.Path:
    return self.results_dir / experiment / folder / f"seed-{seed}"

  def train_command(self, run: Run, seed: int, logdir: pathlib.Path,
                    extra: Mapping[str, object]) -> list[str]:
    return [self.python, "train.py",
            *(f"--flagfile={f}" for f in run.flagfiles),
            *flag_args({**run.flags, **extra}), f"--seed={seed}",
            f"--logdir={_relative(logdir)}", *self.device_flags]

  def eval_command(self, logdir: pathlib.Path, name: str,
                   args: Sequence[str]) -> list[str]:
    # eval.py runs on the devices train.py did, but takes no --strategy.
    devices = [f for f in self.device_flags if not f.startswith("--strategy=")]
    return [self.python, "eval.py", f"--logdir={_relative(logdir)}", *args,
            f"--output_dir={_relative(logdir / 'study-eval' / name)}",
            *devices]

  def execute(self, experiment: str, run: Run, seed: int, *,
              extra: Mapping[str, object] | None = None,
              folder: str | None = None) -> dict | None:
    """Trains and evaluates one run with one seed, unless already done.

    Returns:
      The run's `result.json` record (None on a dry run).

    Raises:
      RuntimeError: train.py or eval.py failed (their output was shown).
      StaleResult: the kept result was made by another command or other
        flagfile contents.
    """
    extra = dict(extra or {})
    folder = folder or run.name
    label = f"{experiment}/{folder}/seed-{seed}"
    logdir = self._runs(experiment, folder, seed)
    results = self._results(experiment, folder, seed)
    train = self.train_command(run, seed, logdir, extra)
    done = results / "result.json"
    digest = flagfile_digest(train)
    # A run others read whose directory is gone (a fresh clone) trains again
    # and its new result replaces the kept one.
    retrain = (done.exists() and run.run_dir_needed
               and not (logdir / "config.json").exists())
    if retrain:
      self.echo(f"{label}: kept, but later runs need its run directory, "
                f"which is gone: training it again.")
    if done.exists() and not retrain:
      record = json.loads(done.read_text())
      made = (_experiment_args(record["train_command"])
              == _experiment_args(_shown(train))
              and record.get("flagfiles_sha256", digest) == digest)
      if not made:
        problem = (f"{label}: the kept result was made by another command "
                   f"or other flagfile contents ({' '.join(record['train_command'][1:])}); "
                   f"delete {_relative(results)} to redo it.")
        if not self.dry_run:
          raise StaleResult(problem)
        self.echo(problem)
      return record
    evals = {name: self.eval_command(logdir, name, args)
             for name, args in run.evals.items()}
    if self.dry_run:
      self.echo(" ".join(train))
      for command in evals.values():
        self.echo(" ".join(command))
      return None

    resumed = (logdir / "config.json").exists()
    self.echo(f"{label}: {'resuming' if resumed else 'training'} "
              f"({datetime.datetime.now():%H:%M:%S})")
    train_seconds = _call(train, logdir / "study-train.log", label)
    eval_seconds = {}
    for name, command in evals.items():
      eval_seconds[name] = _call(command, logdir / f"study-{name}.log",
                                 label)
    results.mkdir(parents=True, exist_ok=True)
    for name in evals:
      shutil.copyfile(logdir / "study-eval" / name / "report.json",
                      results / f"{name}.json")
    first = next(iter(evals))
    for kept in run.keep:
      shutil.copyfile(logdir / "study-eval" / first / kept, results / kept)
    record = {
        "experiment": experiment, "run": folder, "seed": seed,
        "train_command": _shown(train), "flagfiles_sha256": digest,
        "eval_commands": {k: _shown(v) for k, v in evals.items()},
        "flags": {**run.flags, **extra},
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": {k: round(v, 1) for k, v in eval_seconds.items()},
        "resumed": resumed,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(), "commit": _commit(),
    }
    _write_atomically(done, json.dumps(record, indent=1))
    self.echo(f"{label}: done in {train_seconds:.0f} s training, "
              f"{sum(eval_seconds.values()):.0f} s evaluating.")
    return record


def machine() -> dict:
  """What a wall time was measured on."""
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  return {"cpus": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(),
          "load_average_1min_at_end": load}


def _call(command: list[str], log: pathlib.Path, label: str) -> float:
  """Runs `command` from the repository root, output to `log`; seconds.

  Ctrl-C reaches the child too (it shares the terminal's process group);
  this waits for it, so train.py can write its interrupt checkpoint,
  before passing the KeyboardInterrupt on.
  """
  log.parent.mkdir(parents=True, exist_ok=True)
  began = time.perf_counter()
  with open(log, "a") as out:
    out.write(f"\n$ {' '.join(command)}\n")
    out.flush()
    child = subprocess.Popen(command, cwd=ROOT, stdout=out,
                             stderr=subprocess.STDOUT)
    try:
      code = child.wait()
    except KeyboardInterrupt:
      child.send_signal(signal.SIGINT)
      child.wait()
      raise
  seconds = time.perf_counter() - began
  if code != 0:
    tail = log.read_text().strip().splitlines()[-15:]
    raise RuntimeError(f"{label}: {command[1]} exited {code} after "
                       f"{seconds:.0f} s; last lines of {_relative(log)}:\n"
                       + "\n".join(tail))
  return seconds


def flagfile_digest(command: Sequence[str]) -> str:
  """SHA-256 of the flags in the flagfiles `command` names, and in the
  flagfiles those include, in the order absl reads them (comments and
  blank lines left out)."""
  digest = hashlib.sha256()

  def add(path: str, depth: int = 0) -> None:
    file = ROOT / path
    if depth > 10 or not file.is_file():
      digest.update(f"missing:{path}".encode())
      return
    digest.update(path.encode() + b"\0")
    for line in file.read_text().splitlines():
      line = line.strip()
      if not line or line.startswith(("#", "//")):
        continue            # comments change nothing a run does
      digest.update(line.encode() + b"\n")
      if line.startswith("--flagfile="):
        add(line.split("=", 1)[1], depth + 1)

  for arg in command:
    if arg.startswith("--flagfile="):
      add(arg.split("=", 1)[1])
  return digest.hexdigest()


# Flags that say where a run executes, not what it computes.
DEVICE_FLAGS = ("--gpus=", "--cpu_replicas=", "--strategy=")


def _experiment_args(command: Sequence[str]) -> list[str]:
  """A train command without its interpreter and device flags."""
  return [a for a in command[1:] if not a.startswith(DEVICE_FLAGS)]


def _shown(command: list[str]) -> list[str]:
  """`command` as RESULTS.md shows it: the interpreter relative to the
  repository when it is the repository's .venv."""
  python = pathlib.Path(command[0])
  if python.is_absolute() and ROOT in python.parents:
    return [str(python.relative_to(ROOT)), *command[1:]]
  return list(command)


def _relative(path: pathlib.Path) -> str:
  path = pathlib.Path(path).resolve()
  try:
    return str(path.relative_to(ROOT))
  except ValueError:
    return str(path)


def _commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _write_atomically(path: pathlib.Path, text: str) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)
