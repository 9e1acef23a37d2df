"""`train(config)`: build, restore, then hand the run to the controller.

The one function train.py calls. It puts the pieces together in the
order the data flows: config -> build (strategy, data, model, optimizer,
checkpoint) -> restore -> controller (train loop, evaluator, actions) ->
event files, checkpoints and the export.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from typing import Callable

import tensorflow as tf

from cfal.backbones.pretrained import load_pretrained
from cfal.data import datasets
from cfal.errors import UsageError
from cfal.metrics.embedding import prototype_geometry
from cfal.metrics.long_tail import long_tail_report
from cfal.report import tensorboard
from cfal.training import build as build_lib
from cfal.training.actions import (BestModel, ExportModel, Preemption,
                                   SaveCheckpoint, check_workers_agree)
from cfal.training.class_counts_record import write_class_counts
from cfal.training.config import TrainConfig, dtype_policy, op_determinism
from cfal.training.controller import Actions, Controller, RunResult
from cfal.training.run_dir import RunLock, check_run_dir, write_atomically
from cfal.training.evaluator import evaluator_for
from cfal.training.reweighting import DeferredReweighting
from cfal.training.steps import steps_for
from cfal.training.strategy import (is_chief, resolve_step_mode,
                                    slow_bfloat16_note)

Printer = Callable[[str], None]


def train(config: TrainConfig, *, echo: Printer = print) -> RunResult:
  """Trains as `config` says; resumes if `config.run.logdir` has a run.

  The Keras dtype policy that `mixed_precision` needs is set for the run
  and restored afterwards; so is TensorFlow's op determinism, which
  `deterministic` turns on.

  Raises:
    UsageError: a configuration that cannot work, or a run directory in
      use by another live run or holding another run's settings.
    DataError: missing or bad data.
    TrainingError: a non-finite step, or a checkpoint that could not be
      written; the last complete checkpoint is intact.
    Interrupted: SIGTERM/SIGINT arrived on any worker; a checkpoint was
      saved first.
  """
  run = config.run
  if run.skip_nonfinite_steps < 0:
    raise UsageError(f"--skip_nonfinite_steps ({run.skip_nonfinite_steps}) "
                     f"must be >= 0.")
  with dtype_policy(run.mixed_precision), op_determinism(run.deterministic):
    strategy = build_lib.build_strategy(config)
    mode = resolve_step_mode(run.step_mode, strategy,
                             deterministic=run.deterministic)
    logdir = pathlib.Path(run.logdir)
    if not is_chief(strategy):
      # Every worker takes part in saving (it runs collectives), but only
      # the chief writes the run directory; the others write to scratch.
      scratch = pathlib.Path(tempfile.mkdtemp(prefix="cfal-worker-"))
      if (logdir / "checkpoints").exists():
        shutil.copytree(logdir / "checkpoints", scratch / "checkpoints")
      try:
        return _train(config, strategy, mode, logdir, scratch,
                      lambda _: None, chief=False)
      finally:
        shutil.rmtree(scratch, ignore_errors=True)
    slow_note = slow_bfloat16_note(run.mixed_precision)
    if slow_note:
      echo(f"warning: {slow_note}")
    with RunLock(logdir):
      return _train(config, strategy, mode, logdir, logdir, echo, chief=True)


def _train(config: TrainConfig, strategy: tf.distribute.Strategy, mode: str,
           logdir: pathlib.Path, outdir: pathlib.Path, echo: Printer, *,
           chief: bool) -> RunResult:
  """One run, writing into `outdir` (the run directory, or a non-chief
  worker's scratch copy of it)."""
  # Signals are recorded from here on (build and restore included) and
  # acted on by the controller at the same step on every worker.
  with Preemption(strategy, logdir) as preemption:
    return _run(config, strategy, mode, logdir, outdir, echo,
                chief=chief, preemption=preemption)


def _run(config: TrainConfig, strategy: tf.distribute.Strategy, mode: str,
         logdir: pathlib.Path, outdir: pathlib.Path, echo: Printer, *,
         chief: bool, preemption: Preemption) -> RunResult:
  config = check_run_dir(logdir, config)
  data = build_lib.load_data(config, progress=lambda p: echo(str(p)))
  built = build_lib.build(config, strategy=strategy, data=data)
  for note in built.data.notes:
    echo(f"note: {note}")
  if chief and config.data.name.startswith(("folder:", "csv:")):
    # Files a reviewer can check: which file went to which split (and
    # group), so no slide is on both sides.
    write_atomically(outdir / "splits.json", json.dumps(
        datasets.split_record(built.data)))
  latest = SaveCheckpoint(built, outdir / "checkpoints", max_to_keep=3)
  best = SaveCheckpoint(built, outdir / "checkpoints" / "best", max_to_keep=1)
  resumed = latest.restore(outdir)
  if not resumed and config.model.pretrained:
    # Every worker loads the same weights (the source must be on each).
    echo(load_pretrained(built.backbone, config.model.pretrained))
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    check_workers_agree(strategy, int(built.counters.step.numpy()))
  start = int(built.counters.step.numpy())
  if resumed:
    echo(f"Resuming {logdir} at step {start}.")
  write_atomically(outdir / "config.json", config.to_json())
  if chief:
    # The training priors, for eval.py's long-tail groups and post-hoc
    # logit adjustment.
    write_class_counts(outdir, built.data)

  run, data = config.run, built.data
  writer = tf.summary.create_file_writer(str(outdir / "train"))
  validation_writer = tf.summary.create_file_writer(
      str(outdir / "validation"))
  tensorboard.write_hparams(writer, hparams(config, mode, built.reweighting))
  steps = steps_for(built, mode)
  evaluator = evaluator_for(built, keep=run.projector_points,
                            keep_images=run.projector_points, mode=mode)
  title = (f"{config.model.head} head, {config.model.backbone} on "
           f"{data.name} - validation")

  counts = data.class_counts

  def on_validation(result, step):
    prototypes = built.head.prototypes.numpy()
    metric = built.head.embedding_metric
    tensorboard.write_evaluation(
        validation_writer, result, step=step, title=f"{title}, step {step}",
        prototypes=prototypes, metric=metric, projector_dir=str(outdir),
        projector_name="validation",
        long_tail=long_tail_report(counts, result.confusion,
                                   data.class_names),
        # On the embeddings the evaluator kept (the first
        # `projector_points`), as the embedding picture is.
        prototype_geometry=prototype_geometry(
            result.embeddings, result.labels, prototypes, metric))

  iterator = build_lib.train_iterator(built, start)
  echo(f"Training {config.model.backbone} + {config.model.head} on "
       f"{data.name}: {len(data.train_indices)} training / "
       f"{len(data.validation_indices)} validation images, "
       f"{data.num_classes} classes; {built.total_steps} steps of "
       f"{run.batch_size} ({built.per_epoch} per epoch), "
       f"{strategy.num_replicas_in_sync} replica(s), step mode "
       f"{steps.mode}.")
  if built.reweighting is not None:
    echo(f"Deferred re-weighting from step {built.reweighting.first_step} "
         f"(effective number, beta={built.reweighting.beta:g}).")
  controller = Controller(
      built=built, steps=steps, iterator=iterator,
      validate=lambda: evaluator.evaluate(
          build_lib.validation_dataset(built)),
      on_validation=on_validation,
      actions=Actions(checkpoint=latest,
                      best=BestModel(built, best,
                                     run.early_stopping_patience),
                      export=ExportModel(built, outdir / "export", best),
                      preemption=preemption),
      writer=writer, echo=echo)
  try:
    step, stopped_early, export_path = controller.run()
  finally:
    writer.flush()
    validation_writer.flush()
  return RunResult(logdir=logdir, step=step,
                   validation=controller.last_eval,
                   best_balanced_accuracy=float(built.counters.best.numpy()),
                   export_path=export_path if chief else None,
                   stopped_early=stopped_early, history=controller.history,
                   is_chief=chief)


def hparams(config: TrainConfig, mode: str,
            reweighting: DeferredReweighting | None = None) -> dict:
  """The run's hyper-parameters for TensorBoard's HParams tab.

  `reweighting_from_step` is the step deferred re-weighting starts at
  (-1: never), so runs given it in epochs and in steps compare."""
  values = {"head": config.model.head, "backbone": config.model.backbone,
            "embedding_dim": config.model.embedding_dim,
            "dataset": config.data.name,
            "imbalance_ratio": config.data.imbalance_ratio,
            "sampler": config.data.sampler,
            "batch_size": config.run.batch_size,
            "learning_rate": config.optimizer.learning_rate,
            "head_learning_rate": (config.optimizer.head_learning_rate
                                   or config.optimizer.learning_rate),
            "freeze_backbone_steps": config.optimizer.freeze_backbone_steps,
            "reweighting_from_step": (-1 if reweighting is None
                                      else reweighting.first_step),
            "reweighting_beta": (0.0 if reweighting is None
                                 else reweighting.beta),
            "optimizer": config.optimizer.name, "step_mode": mode,
            "mixed_precision": config.run.mixed_precision,
            "seed": config.run.seed}
  values.update({f"head_{k}": v for k, v in config.model.head_args.items()})
  values.update({f"backbone_{k}": v
                 for k, v in config.model.backbone_args.items()})
  return values
