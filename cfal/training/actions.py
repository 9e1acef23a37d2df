"""What the controller runs at its cadence: checkpoints, the best model and
early stopping, export, and coordinated preemption.

Each action owns one job and its failure modes (a checkpoint that cannot
be written, a non-finite variable, a signal on one worker of many); the
controller only decides when to call them.
"""

from __future__ import annotations

import pathlib
import re
import shutil

import tensorflow as tf

from cfal.errors import Interrupted, TrainingError, UsageError
from cfal.training import export
from cfal.training.build import Built
from cfal.training.faults import nonfinite_variables
from cfal.training.interrupts import SIGNALS, StopRequests, signal_name


class SaveCheckpoint:
  """Checkpoints of finite variables in `directory`, or one line why not.

  A save that fails (a full disk) removes its own pieces and leaves the
  previous checkpoint as the latest; a variable holding NaN or Inf is never
  saved. Saving the same step twice is a no-op, so a step's checkpoint is
  never overwritten in place.
  """

  def __init__(self, built: Built, directory: pathlib.Path,
               max_to_keep: int):
    self.built = built
    self.manager = tf.train.CheckpointManager(
        built.checkpoint, str(directory), max_to_keep=max_to_keep)

  @property
  def latest(self) -> str | None:
    return self.manager.latest_checkpoint

  def __call__(self, step: int) -> None:
    previous = self.manager.latest_checkpoint
    if previous and previous.endswith(f"-{step}"):
      return
    bad = nonfinite_variables(self.built.all_variables)
    if bad:
      raise TrainingError(f"step {step}: {len(bad)} variable(s) hold NaN or "
                          f"Inf (e.g. {bad[0]}); not saving them. "
                          f"{previous or 'No earlier checkpoint'} is intact.")
    try:
      self.manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as error:
      _remove_unlisted(pathlib.Path(self.manager.directory), step)
      kept = (f"the previous checkpoint {previous} is intact" if previous
              else "no earlier checkpoint exists")
      raise TrainingError(f"Could not write the checkpoint of step {step} to "
                          f"{self.manager.directory} ({_os_reason(error)}); "
                          f"{kept}. Free space and rerun the same command to "
                          f"resume.") from None

  def restore(self, logdir: pathlib.Path) -> bool:
    """Restores the latest checkpoint, if any; True when it did."""
    path = self.manager.latest_checkpoint
    if not path:
      return False
    try:
      self.built.checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
      first = str(error).strip().splitlines()[0][:160]
      raise UsageError(f"Cannot resume {logdir} from {path} with these "
                       f"flags: {first} (use the run's own flags or a new "
                       f"--logdir).") from None
    return True


class BestModel:
  """Keeps the best checkpoint by validation balanced accuracy and says
  when early stopping's patience has run out.

  The best score and the evaluations since it are checkpointed counters,
  so a resumed run keeps the same books as an uninterrupted one.
  """

  def __init__(self, built: Built, saver: SaveCheckpoint, patience: int):
    self.counters = built.counters
    self.saver = saver
    self.patience = patience

  def __call__(self, step: int, report: dict) -> bool:
    """Records one evaluation; True when training should stop early."""
    score = report["balanced_accuracy"]
    if score > float(self.counters.best.numpy()):
      self.counters.best.assign(score)
      self.counters.evals_without_gain.assign(0)
      self.saver(step)
      return False
    self.counters.evals_without_gain.assign_add(1)
    return bool(self.patience) and (
        int(self.counters.evals_without_gain.numpy()) >= self.patience)


class ExportModel:
  """Writes the SavedModel at the end of a run (the best model's weights
  when early stopping ran past it)."""

  def __init__(self, built: Built, directory: pathlib.Path,
               best: SaveCheckpoint):
    self.built = built
    self.directory = directory
    self.best = best

  def __call__(self, step: int, stopped_early: bool, echo) -> pathlib.Path:
    built = self.built
    if stopped_early and self.best.latest:
      built.checkpoint.read(self.best.latest).expect_partial()
      step = int(self.best.latest.rsplit("-", 1)[1])
      echo(f"Exporting the best model, {self.best.latest}.")
    return export.export_saved_model(
        self.directory, backbone=built.backbone, head=built.head,
        image_shape=built.data.image_shape,
        class_names=built.data.class_names, step=step,
        class_counts=built.data.class_counts)


class Preemption:
  """SIGTERM/SIGINT on any worker stops every worker at the same step.

  Signals only set a local flag (`StopRequests`). After each compiled call
  the controller asks `requested()`: with several workers the flags are
  summed across the cluster (one tiny all-reduce per call), so all workers
  see the request at the same step, save one checkpoint together (the
  chief writes it into the run directory) and stop with the same exit
  code, instead of one leaving while the others wait in a collective.

  Args:
    strategy: the run's strategy.
    logdir: the run directory, for the line every worker prints (a
      non-chief worker's own copy is scratch, deleted on the way out).
  """

  def __init__(self, strategy: tf.distribute.Strategy,
               logdir: pathlib.Path):
    self.strategy = strategy
    self.logdir = pathlib.Path(logdir)
    self.stops = StopRequests()
    self._multi_worker = isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy)
    self._sum = _cluster_sum(strategy) if self._multi_worker else None
    self.signum: int | None = None

  def __enter__(self) -> "Preemption":
    self.stops.__enter__()
    return self

  def __exit__(self, *exc_info) -> None:
    self.stops.__exit__(*exc_info)

  def requested(self) -> bool:
    """Whether any worker got a signal (the same answer on every worker)."""
    if not self._multi_worker:
      self.signum = self.stops.signum
      return self.signum is not None
    # One flag per signal kind, summed over every replica of every worker.
    seen = self._sum(tf.constant(
        [float(self.stops.signum == s) for s in SIGNALS]))
    hits = [s for s, n in zip(SIGNALS, seen.numpy()) if n > 0]
    self.signum = int(hits[0]) if hits else None
    return self.signum is not None

  def stop(self, saver: SaveCheckpoint, step: int, flush) -> None:
    """Saves a checkpoint at `step` and raises `Interrupted`."""
    saver(step)
    flush()
    saved = self.logdir / "checkpoints" / pathlib.Path(saver.latest).name
    raise Interrupted(f"{signal_name(self.signum)}: saved {saved} at step "
                      f"{step}; rerun the same command to resume.",
                      self.signum)


def check_workers_agree(strategy: tf.distribute.Strategy, step: int) -> None:
  """Every worker must restore the same step, or they train different runs.

  Two sums over every replica (float64, exact for any step count): the
  mean, then the squared deviations from it, which are 0 only when every
  worker restored the same step, so all of them stop together.
  """
  cluster_sum = _cluster_sum(strategy)
  replicas = strategy.num_replicas_in_sync
  mean = float(cluster_sum(tf.constant(float(step), tf.float64))) / replicas
  spread = float(cluster_sum(tf.constant((step - mean) ** 2, tf.float64)))
  if spread != 0.0:
    raise TrainingError(f"This worker restored step {step} but the workers "
                        f"average {mean:g}: every worker must read the "
                        f"chief's checkpoints, so put --logdir on a "
                        f"filesystem they all share.")


def _cluster_sum(strategy: tf.distribute.Strategy):
  """A compiled function: `values` summed over every replica of every
  worker. Eager `strategy.run` is slow under MultiWorkerMirroredStrategy
  and makes TensorFlow print a warning on stderr (five per process); each
  replica takes its own copy (`tf.identity`), or a worker with several
  replicas would hand the reduction one value, not one per replica."""

  @tf.function(autograph=False)
  def cluster_sum(values):
    per_replica = strategy.run(lambda: tf.identity(values))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica,
                           axis=None)

  return cluster_sum


def _os_reason(error: Exception) -> str:
  """"No space left on device" out of TensorFlow's wrapped I/O errors."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = re.sub(r"\{\{.*?\}\}\s*", "", text)   # {{function_node ...}}
  text = re.sub(r"\s*\[Op:\w+\]$", "", text)
  return (text.rpartition("; ")[2] or text or type(error).__name__)[:200]


def _remove_unlisted(directory: pathlib.Path, step: int) -> None:
  """Deletes the pieces of a failed save of `step` the state never listed."""
  listed = tf.train.latest_checkpoint(str(directory)) or ""
  if listed.endswith(f"-{step}"):
    return
  for piece in directory.glob(f"ckpt-{step}[._]*"):
    if piece.is_dir():
      shutil.rmtree(piece, ignore_errors=True)
    else:
      piece.unlink(missing_ok=True)
