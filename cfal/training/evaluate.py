"""Evaluating a finished run: what eval.py calls.

`evaluate_run` reads `<logdir>/config.json` once, builds the model with the
one builder (`build`), restores a checkpoint (or loads the exported
SavedModel), runs the split through the one evaluator, and hands the result
to the report code, which writes `<logdir>/eval/<split>/<weights>/`
(`ckpt-842`, `best-ckpt-700`, `saved_model-export`): report.json,
report.md, predictions.npz, the pictures, projector files, and TensorBoard
summaries at the step of the weights evaluated. The report says where the
head's prototypes sit relative to their class means
(`cfal.metrics.embedding.prototype_geometry`) and groups the
classes into many-, medium- and few-shot by their training counts
(`<logdir>/class_counts.json`), and `EvalConfig.logit_adjustment` /
`tau_normalization` evaluate the model with a post-hoc correction
(`cfal.heads.posthoc`) into a folder of its own
(`ckpt-842+logit_adjusted_tau1`).
"""

from __future__ import annotations

import pathlib
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from cfal.data import datasets, pipeline
from cfal.errors import UsageError
from cfal.heads.posthoc import PostHoc
from cfal.metrics.embedding import prototype_geometry
from cfal.metrics.long_tail import long_tail_report
from cfal.report import documents, tensorboard
from cfal.training import build as build_lib
from cfal.training.class_counts_record import (FILENAME, read_class_counts,
                                               stored_counts)
from cfal.training.config import TrainConfig, dtype_policy
from cfal.training.eval_config import (EvalConfig, check_eval_config,
                                       check_saved_model, check_split,
                                       checkpoint_path, load_run_config,
                                       output_name)
from cfal.training.evaluator import (Evaluator, corrected_forward,
                                     model_forward, saved_model_forward)
from cfal.training.strategy import make_strategy

Printer = Callable[[str], None]
# Examples shown in TensorBoard's projector, with their images as a sprite.
PROJECTOR_POINTS = 5000

__all__ = ["EvalConfig", "evaluate_run", "check_split", "load_run_config"]


def _split(data: datasets.DataBundle, split: str):
  """The source and indices of `split` (checked by `check_split`)."""
  if split == "validation":
    return data.source, data.validation_indices
  return data.test_source, np.arange(len(data.test_source))


def saved_identity(path: str) -> str | None:
  """The model identity a cfal checkpoint records (None if it has none)."""
  reader = tf.train.load_checkpoint(path)
  key = "model_identity/.ATTRIBUTES/VARIABLE_VALUE"
  if not reader.has_tensor(key):
    return None
  return reader.get_tensor(key).decode()


def evaluate_run(config: EvalConfig, *, echo: Printer = print) -> dict:
  """Evaluates one run; returns the report (also written to disk)."""
  run = check_eval_config(config)
  with dtype_policy(run.run.mixed_precision):
    return _evaluate(config, run, echo)


def _evaluate(config: EvalConfig, run: TrainConfig, echo: Printer) -> dict:
  logdir = pathlib.Path(config.logdir)
  strategy = make_strategy(gpus=config.gpus, cpu_replicas=config.cpu_replicas)
  path = None
  if config.saved_model:
    model = _load_saved_model(config.saved_model)
    data = build_lib.load_data(run, progress=lambda p: echo(str(p)))
    forward, metric = saved_model_forward(model), (
        model.embedding_metric.numpy().decode())
    prototypes = model.head.prototypes.numpy()
    head = model.head
    step = (int(model.step.numpy()) if hasattr(model, "step") else None)
    origin = f"SavedModel {config.saved_model}" + (
        f" (step {step})" if step is not None else "")
  else:
    path = checkpoint_path(logdir, config.checkpoint)
    saved = saved_identity(path)
    if saved is not None and saved != run.model.identity():
      raise UsageError(f"Checkpoint {path} holds {saved}, but this run is "
                       f"{run.model.identity()}: use that run's --logdir.")
    built = build_lib.build(run, training=False, strategy=strategy,
                            data=build_lib.load_data(
                                run, progress=lambda p: echo(str(p))))
    data = built.data
    try:
      # Optimizer slots stay behind on purpose: evaluation needs the model.
      built.checkpoint.read(path).assert_existing_objects_matched(
      ).expect_partial()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
      first = str(error).strip().splitlines()[0][:160]
      raise UsageError(f"Checkpoint {path} does not match this run's model "
                       f"(head={run.model.head}, backbone="
                       f"{run.model.backbone}, embedding_dim="
                       f"{run.model.embedding_dim}): {first}") from None
    step = int(built.counters.step.numpy())
    forward = model_forward(built.backbone, built.head)
    head = built.head
    metric = built.head.embedding_metric
    prototypes = built.head.prototypes.numpy()
    origin = f"checkpoint {path} (step {step})"
  counts = training_counts(logdir, data, echo)
  posthoc = PostHoc(
      logit_adjustment=config.logit_adjustment,
      class_counts=tuple(int(c) for c in counts),
      tau_normalization=config.tau_normalization, head=head)
  if posthoc:
    forward = corrected_forward(forward, posthoc)
    origin += " with " + _posthoc_text(config)
  source, indices = _split(data, config.split)
  dataset = pipeline.eval_dataset(source, indices,
                                  batch_size=config.batch_size)
  evaluator = Evaluator(strategy=strategy, forward=forward,
                        class_names=data.class_names,
                        keep_images=PROJECTOR_POINTS)
  result = evaluator.evaluate(dataset)
  report = documents.evaluation_report(
      result, run=run, logdir=str(logdir), split=config.split, origin=origin,
      metric=metric, step=step, progress=_progress_line(echo),
      long_tail=long_tail_report(counts, result.confusion,
                                 data.class_names),
      posthoc=posthoc.record(),
      prototypes=prototype_geometry(result.embeddings, result.labels,
                                    prototypes, metric, data.class_names))
  out = pathlib.Path(config.output_dir or logdir / "eval" / config.split /
                     output_name(logdir, config, path))
  pngs = documents.write_outputs(out, report, result, prototypes,
                                 formats=config.figure_formats,
                                 dpi=config.dpi)
  writer = tf.summary.create_file_writer(str(out))
  tensorboard.write_evaluation(
      writer, result, step=step if step is not None else 0,
      title=documents.figure_title(report), prototypes=prototypes,
      metric=metric, projector_dir=str(out.parent), projector_name=out.name,
      projector_points=PROJECTOR_POINTS, pngs=pngs,
      long_tail=report["long_tail"], prototype_geometry=report["prototypes"])
  writer.close()
  echo(documents.summary_table(report))
  pictures = ", ".join(f"{name}.{fmt}" for name in pngs
                       for fmt in config.figure_formats)
  echo(f"Wrote {out}/: report.json, report.md, predictions.npz, "
       f"{pictures}, projector files.")
  return report


def training_counts(logdir: pathlib.Path, data: datasets.DataBundle,
                    echo: Printer) -> np.ndarray:
  """The training split's examples per class, as the run recorded them
  (`class_counts.json`); for a run made before that file, those of the
  data split rebuilt from its config (deterministic), said in one line."""
  record = read_class_counts(logdir)
  counts = stored_counts(record, data.class_names)
  rebuilt = np.asarray(data.class_counts, np.int64)
  if counts is None:
    echo(f"note: {logdir} has no {FILENAME} (an older run); its training "
         f"class counts were rebuilt from its config's data split.")
    return rebuilt
  if not np.array_equal(counts, rebuilt):
    echo(f"note: the training class counts in {logdir / FILENAME} differ "
         f"from those of the data now at {data.name}; using the recorded "
         f"ones, which the model was trained on.")
  return counts


def _posthoc_text(config: EvalConfig) -> str:
  parts = []
  if config.tau_normalization is not None:
    parts.append(f"the tau-normalised classifier (tau "
                 f"{config.tau_normalization:g}, no bias)")
  if config.logit_adjustment is not None:
    parts.append(f"post-hoc logit adjustment (tau "
                 f"{config.logit_adjustment:g})")
  return " and ".join(parts)


def _progress_line(echo: Printer, every: float = 10.0):
  """A `progress(done, total)` that echoes at most every `every` seconds,
  so only evaluations that take a while say how far they are."""
  started = time.monotonic()
  last = [started]

  def progress(done: int, total: int) -> None:
    now = time.monotonic()
    if now - last[0] >= every and done < total:
      last[0] = now
      rate = done / max(now - started, 1e-9)
      echo(f"retrieval metrics: {done}/{total} queries, about "
           f"{(total - done) / rate:.0f} s left")
  return progress


def _load_saved_model(path: str):
  check_saved_model(path, exists=tf.io.gfile.exists)
  return tf.saved_model.load(path)
