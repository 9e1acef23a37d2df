"""The controller: the cadence of a run, and nothing else.

It calls the compiled train loop for up to `steps_per_loop` steps, writes
the train scalars it returns, and at the right steps runs the actions:
validation (the evaluator, then its summaries and the best-model action),
checkpoints, coordinated preemption, and the export at the end. It builds
no model and draws no figure.

Cadence invariants that make a killed run resume exactly:
  * compiled calls end on every evaluation and checkpoint step, so the
    steps at which things happen never depend on where a run resumed;
  * a checkpoint taken at an evaluation step always holds the state from
    *before* that evaluation, so a run resumed there evaluates again and
    does the same bookkeeping (best score, patience) an uninterrupted run
    did, on the same weights.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Callable

import tensorflow as tf

from cfal.errors import TrainingError
from cfal.report import tensorboard
from cfal.training.actions import (BestModel, ExportModel, Preemption,
                                   SaveCheckpoint)
from cfal.training.build import Built
from cfal.training.evaluator import EvalResult
from cfal.training.faults import nonfinite_message
from cfal.training.steps import Steps

Printer = Callable[[str], None]


@dataclasses.dataclass
class RunResult:
  """What a finished `train` call reports."""

  logdir: pathlib.Path
  step: int
  validation: dict
  best_balanced_accuracy: float
  export_path: pathlib.Path | None
  stopped_early: bool
  history: list[dict] = dataclasses.field(default_factory=list)
  is_chief: bool = True


@dataclasses.dataclass
class Actions:
  """The actions a controller runs (see `cfal.training.actions`)."""

  checkpoint: SaveCheckpoint
  best: BestModel
  export: ExportModel
  preemption: Preemption


class Controller:
  """Runs `built` to `built.total_steps` at the configured cadence.

  Args:
    built: the built run (model, optimizer, counters, data, config).
    steps: its compiled train loop.
    iterator: the distributed training stream, positioned at the step
      restored.
    validate: runs one validation and returns its `EvalResult`.
    on_validation: writes a validation's summaries, `(result, step)`.
    actions: checkpoint, best model, export, preemption.
    writer: the train event-file writer.
    echo: where progress lines go (nothing on non-chief workers).
  """

  def __init__(self, *, built: Built, steps: Steps, iterator,
               validate: Callable[[], EvalResult],
               on_validation: Callable[[EvalResult, int], None],
               actions: Actions, writer, echo: Printer):
    self.built = built
    self.steps = steps
    self.iterator = iterator
    self.validate = validate
    self.on_validation = on_validation
    self.actions = actions
    self.writer = writer
    self.echo = echo
    self.checkpoint_every = built.config.run.checkpoint_every
    self.last_eval: dict = {}
    self.history: list[dict] = []

  # -- the cadence ----------------------------------------------------------

  def is_eval_step(self, step: int) -> bool:
    return step % self.built.eval_every == 0 or step == self.built.total_steps

  def is_checkpoint_step(self, step: int) -> bool:
    return (step % self.checkpoint_every == 0
            or step == self.built.total_steps)

  def chunk(self, current: int) -> int:
    """Steps in the next compiled call: up to the next event, at most K."""
    n = min(self.built.config.run.steps_per_loop,
            self.built.total_steps - current)
    for every in (self.built.eval_every, self.checkpoint_every):
      n = min(n, every - current % every)
    # A call never crosses a change of the loop (the body joining after
    # --freeze_backbone_steps, deferred re-weighting starting).
    for boundary in self.steps.boundaries():
      if current < boundary:
        n = min(n, boundary - current)
    return n

  # -- the run ----------------------------------------------------------------

  def run(self) -> tuple[int, bool, pathlib.Path]:
    """Trains to the end (or early stop); returns (step, stopped early,
    export path).

    Raises:
      TrainingError: a non-finite step or an unwritable checkpoint.
      Interrupted: a signal on any worker; a checkpoint was saved first.
    """
    built, actions = self.built, self.actions
    start = int(built.counters.step.numpy())
    stopped_early = False
    current = start
    # The caller entered `preemption` before building, so a signal at any
    # moment of the run is only recorded; it is acted on here.
    preemption = actions.preemption
    if 0 < start and self.is_eval_step(start):
      # Killed after the checkpoint of an evaluation step: evaluate again.
      stopped_early = self._validate(start)
    timer = _Timer(built.total_steps - start)
    while current < built.total_steps and not stopped_early:
      current = self._train_chunk(current, timer)
      if self.is_checkpoint_step(current) or self.is_eval_step(current):
        actions.checkpoint(current)
      if self.is_eval_step(current):
        stopped_early = self._validate(current)
      self.writer.flush()
      if preemption.requested():
        preemption.stop(actions.checkpoint, current, self.writer.flush)
    actions.checkpoint(current)
    if stopped_early:
      self.echo(f"Stopping early: no better validation balanced accuracy "
                f"in {actions.best.patience} evaluations.")
    export_path = actions.export(current, stopped_early, self.echo)
    self.writer.flush()
    return current, stopped_early, export_path

  def _train_chunk(self, current: int, timer: "_Timer") -> int:
    """One compiled call; returns the new step. Raises on a bad step."""
    built, run = self.built, self.built.config.run
    counters = built.counters
    n = self.chunk(current)
    budget = run.skip_nonfinite_steps - int(counters.skipped.numpy())
    reweighting = built.reweighting
    if reweighting is not None and current == reweighting.first_step:
      self.echo(f"step {current}: {reweighting.describe()}")
    began = time.perf_counter()
    results = self.steps.loop_for(current)(self.iterator, tf.constant(n),
                                           tf.constant(max(budget, 0)))
    consumed = int(results["steps"])
    seconds = time.perf_counter() - began
    if int(results["fault"]):
      raise TrainingError(nonfinite_message(
          int(results["fault"]), current + consumed, built.config,
          self.actions.checkpoint.latest))
    current += consumed
    counters.step.assign(current)
    skipped = int(results["skipped"])
    if skipped:
      counters.skipped.assign_add(skipped)
      self.echo(f"warning: skipped {skipped} non-finite step(s) before step "
                f"{current}; {int(counters.skipped.numpy())} of "
                f"{run.skip_nonfinite_steps} allowed so far.")
    loss, accuracy = float(results["loss"]), float(results["accuracy"])
    self.history.append({"step": current, "loss": loss,
                         "accuracy": accuracy})
    scalars = {"loss": loss, "accuracy": accuracy,
               **built.optimization.learning_rates(),
               "skipped_steps": float(counters.skipped.numpy())}
    if reweighting is not None:
      # 1 when this call's steps were re-weighted (calls end at the switch).
      scalars["class_reweighting"] = float(
          reweighting.active(current - consumed))
    # The first call of a process also traces and compiles: no rate, no ETA.
    first = not timer.timed
    if not first:
      scalars["examples_per_second"] = consumed * run.batch_size / seconds
    tensorboard.write_scalars(self.writer, scalars, current)
    speed = ("first call, compiling" if first else
             f"{scalars['examples_per_second']:.0f} examples/s  ETA "
             f"{timer.eta(consumed, seconds)}")
    if first:
      timer.skip(consumed)
    self.echo(f"step {current}/{built.total_steps}  epoch "
              f"{current / built.per_epoch:.2f}  loss {loss:.4f}  accuracy "
              f"{accuracy:.3f}  {speed}")
    return current

  def _validate(self, step: int) -> bool:
    """Evaluates and runs the best-model action; True to stop early."""
    result = self.validate()
    self.last_eval = result.report
    self.on_validation(result, step)
    report = result.report
    self.echo(f"validation at step {step}: accuracy {report['accuracy']:.4f}"
              f"  balanced accuracy {report['balanced_accuracy']:.4f}  macro "
              f"F1 {report['macro_f1']:.4f}")
    return self.actions.best(step, report)


class _Timer:
  """ETA from the average time per step so far (compiling excluded)."""

  def __init__(self, remaining: int):
    self.remaining = remaining
    self.seconds = 0.0
    self.done = 0
    self.timed = False

  def skip(self, steps: int) -> None:
    """Counts steps whose time is not representative (the first call)."""
    self.remaining -= steps
    self.timed = True

  def eta(self, steps: int, seconds: float) -> str:
    self.timed = True
    self.done += steps
    self.seconds += seconds
    left = max(0, self.remaining - self.done) * self.seconds / max(self.done, 1)
    minutes, secs = divmod(int(left), 60)
    return f"{minutes}m{secs:02d}s"
