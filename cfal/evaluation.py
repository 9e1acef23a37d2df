"""Evaluating a trained run: the numbers and pictures a report needs.

`evaluate_run` rebuilds the model from `<logdir>/config.json`, restores a
checkpoint (or loads an exported SavedModel), runs a split through the
compiled, strategy-aware eval step, and writes into
`<logdir>/eval/<split>/`: report.json, report.md, predictions.npz,
confusion_matrix.png, embeddings.png, projector files and the same images
as TensorBoard summaries.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

import cfal.backbones
from cfal.data import datasets, pipeline
from cfal.errors import UsageError
from cfal.metrics.classification import classification_report
from cfal.metrics.embedding import compactness_separation, retrieval_metrics
from cfal.training import summaries
from cfal.training.config import TrainConfig, dtype_policy
from cfal.training.loop import backbone_options, build_head
from cfal.training.steps import Steps
from cfal.training.strategy import make_strategy

Printer = Callable[[str], None]
SPLITS = ("test", "validation")


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
    output_dir: where results go (default `<logdir>/eval/<split>`).
  """

  logdir: str
  split: str = "test"
  checkpoint: str = "latest"
  saved_model: str | None = None
  batch_size: int = 256
  gpus: int = 0
  cpu_replicas: int = 0
  output_dir: str | None = None


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


def _checkpoint_path(logdir: pathlib.Path, which: str) -> str:
  if which in ("latest", "best"):
    folder = logdir / "checkpoints"
    if which == "best":
      folder = folder / "best"
    path = tf.train.latest_checkpoint(str(folder))
    if path is None:
      raise UsageError(f"{logdir} has no {which} checkpoint in {folder}; "
                       f"train first (or pass --checkpoint=PATH).")
    return path
  if not tf.io.gfile.exists(which + ".index"):
    raise UsageError(f"Checkpoint {which} not found (expected "
                     f"{which}.index).")
  return which


def _split(data: datasets.DataBundle, split: str):
  if split == "validation":
    return data.source, data.validation_indices
  if split == "test":
    if data.test_source is None:
      raise UsageError(f"{data.name} has no test split; use "
                       f"--split=validation.")
    return data.test_source, np.arange(len(data.test_source))
  raise UsageError(f"Unknown --split={split!r}; choose test or validation.")


def evaluate_run(config: EvalConfig, *, echo: Printer = print) -> dict:
  """Evaluates one run; returns the report (also written to disk)."""
  run = load_run_config(config.logdir)
  with dtype_policy(run.run.mixed_precision):
    return _evaluate_run(config, echo)


def _evaluate_run(config: EvalConfig, echo: Printer) -> dict:
  if config.split not in SPLITS:
    raise UsageError(f"Unknown --split={config.split!r}; choose test or "
                     f"validation.")
  logdir = pathlib.Path(config.logdir)
  run = load_run_config(logdir)
  strategy = make_strategy(gpus=config.gpus, cpu_replicas=config.cpu_replicas)
  data = datasets.load_data(run.data)
  source, indices = _split(data, config.split)
  dataset = pipeline.eval_dataset(source, indices,
                                  batch_size=config.batch_size)

  if config.saved_model:
    results, head_metric, prototypes, origin = _run_saved_model(
        config.saved_model, dataset)
  else:
    results, head_metric, prototypes, origin = _run_checkpoint(
        run, logdir, config, data, strategy, dataset)

  confusion = np.zeros((data.num_classes, data.num_classes), np.int64)
  np.add.at(confusion, (results["labels"], results["predictions"]), 1)
  report = {
      "run": str(logdir), "split": config.split, "evaluated": origin,
      "head": run.model.head, "backbone": run.model.backbone,
      "dataset": run.data.name, "embedding_dim": run.model.embedding_dim,
      "embedding_metric": head_metric,
      **classification_report(confusion, data.class_names),
      "confusion_matrix": confusion.tolist(),
      "embedding": {
          **compactness_separation(results["embeddings"], results["labels"],
                                   metric=head_metric),
          **retrieval_metrics(results["embeddings"], results["labels"],
                              metric=head_metric),
      },
  }
  out = pathlib.Path(config.output_dir or logdir / "eval" / config.split)
  write_outputs(out, report, results, data.class_names, prototypes)
  echo(summary_table(report))
  echo(f"Wrote {out}/: report.json, report.md, predictions.npz, "
       f"confusion_matrix.png, embeddings.png, projector files.")
  return report


def _run_checkpoint(run, logdir, config, data, strategy, dataset):
  path = _checkpoint_path(logdir, config.checkpoint)
  with strategy.scope():
    backbone = cfal.backbones.build_backbone(
        run.model.backbone, input_shape=data.image_shape,
        embedding_dim=run.model.embedding_dim, seed=run.run.seed,
        **backbone_options(run))
    head = build_head(run, data.class_counts, data.num_classes)
  saved = saved_identity(path)
  if saved is not None and saved != run.model.identity():
    raise UsageError(f"Checkpoint {path} holds {saved}, but this run is "
                     f"{run.model.identity()}: use that run's --logdir.")
  step = tf.Variable(0, dtype=tf.int64)
  checkpoint = tf.train.Checkpoint(backbone=backbone, head=head, step=step)
  try:
    # Optimizer slots stay behind on purpose: evaluation needs the model.
    checkpoint.read(path).assert_existing_objects_matched().expect_partial()
  except (AssertionError, ValueError, tf.errors.OpError) as error:
    first = str(error).strip().splitlines()[0][:160]
    raise UsageError(f"Checkpoint {path} does not match this run's model "
                     f"(head={run.model.head}, backbone={run.model.backbone}, "
                     f"embedding_dim={run.model.embedding_dim}): "
                     f"{first}") from None
  steps = Steps(strategy=strategy, backbone=backbone, head=head,
                optimizer=None, global_batch_size=config.batch_size,
                mode="function")
  parts = {"embeddings": [], "labels": [], "predictions": []}
  for batch in strategy.experimental_distribute_dataset(dataset):
    embeddings, labels, predictions, _, _ = steps.eval_step(batch)
    for key, value in (("embeddings", embeddings), ("labels", labels),
                       ("predictions", predictions)):
      parts[key].extend(v.numpy() for v in
                        strategy.experimental_local_results(value))
  results = {k: np.concatenate(v) for k, v in parts.items()}
  results["scores"] = np.concatenate([
      head(results["embeddings"][i:i + 4096]).numpy()
      for i in range(0, len(results["labels"]), 4096)])
  origin = f"checkpoint {path} (step {int(step.numpy())})"
  return results, head.embedding_metric, head.prototypes.numpy(), origin


def saved_identity(path: str) -> str | None:
  """The model identity a cfal checkpoint records (None if it has none)."""
  reader = tf.train.load_checkpoint(path)
  key = "model_identity/.ATTRIBUTES/VARIABLE_VALUE"
  if not reader.has_tensor(key):
    return None
  return reader.get_tensor(key).decode()


def _run_saved_model(path, dataset):
  if not tf.io.gfile.exists(str(pathlib.Path(path) / "saved_model.pb")):
    raise UsageError(f"{path} is not a SavedModel (no saved_model.pb).")
  model = tf.saved_model.load(path)
  parts = {"embeddings": [], "labels": [], "predictions": [], "scores": []}
  for images, labels in dataset:
    out = model.classify(images)
    parts["embeddings"].append(out["embeddings"].numpy())
    parts["predictions"].append(out["class_ids"].numpy())
    parts["scores"].append(out["scores"].numpy())
    parts["labels"].append(labels.numpy())
  results = {k: np.concatenate(v) for k, v in parts.items()}
  prototypes = model.head.prototypes.numpy()
  metric = model.embedding_metric.numpy().decode()
  return results, metric, prototypes, f"SavedModel {path}"


def write_outputs(out: pathlib.Path, report: dict, results: dict,
                  class_names: Sequence[str], prototypes) -> None:
  from cfal.viz import plots  # pylint: disable=import-outside-toplevel
  out.mkdir(parents=True, exist_ok=True)
  (out / "report.json").write_text(json.dumps(report, indent=1,
                                              default=_json_default))
  (out / "report.md").write_text(markdown_report(report))
  np.savez_compressed(out / "predictions.npz", labels=results["labels"],
                      predictions=results["predictions"],
                      scores=results["scores"],
                      embeddings=results["embeddings"],
                      class_names=np.array(class_names))
  title = (f"{report['head']} head, {report['backbone']} on "
           f"{report['dataset']} - {report['split']}")
  confusion = np.asarray(report["confusion_matrix"])
  figures = {
      "confusion_matrix": plots.confusion_matrix_figure(confusion,
                                                        class_names, title),
      "embeddings": plots.embedding_figure(
          results["embeddings"], results["labels"], class_names, title,
          prototypes=prototypes, metric=report["embedding_metric"]),
  }
  writer = tf.summary.create_file_writer(str(out))
  for name, figure in figures.items():
    png = plots.figure_to_png(figure)
    (out / f"{name}.png").write_bytes(png)
    with writer.as_default(step=0):
      tf.summary.image(name, tf.io.decode_png(png)[None], step=0)
  writer.flush()
  keep = slice(0, 5000)
  summaries.write_projector(str(out.parent), results["embeddings"][keep],
                            results["labels"][keep], class_names,
                            name=out.name)


KEY_METRICS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."),
               ("macro_f1", "macro F1"), ("mcc", "MCC"),
               ("cohen_kappa", "kappa"))


def _embedding_keys(report: dict) -> list[tuple[str, str]]:
  emb = report.get("embedding", {})
  wanted = (("precision_at_1", "P@1"), ("r_precision", "R-precision"),
            ("map_at_r", "MAP@R"), ("ratio", "separation/compactness"))
  return [(k, label) for k, label in wanted if k in emb]


def summary_table(report: dict) -> str:
  """The terminal summary: key metrics, then the per-class table."""
  lines = [f"{report['head']} / {report['backbone']} on {report['dataset']}"
           f" ({report['split']}, {report['num_samples']} examples; "
           f"{report['evaluated']})"]
  for key, label in KEY_METRICS:
    lines.append(f"  {label:<24} {report[key]:.4f}")
  for key, label in _embedding_keys(report):
    lines.append(f"  {label:<24} {report['embedding'][key]:.4f}")
  lines.append(_per_class_text(report))
  return "\n".join(lines)


def _per_class_text(report: dict) -> str:
  width = max(12, max(len(n) for n in report["per_class"]) + 2)
  rows = [f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}"
          f"{'support':>10}"]
  for name, c in report["per_class"].items():
    rows.append(f"{name:<{width}}{c['precision']:>10.4f}{c['recall']:>10.4f}"
                f"{c['f1']:>10.4f}{c['support']:>10}")
  return "\n".join(rows)


def markdown_report(report: dict) -> str:
  """report.md: the same numbers as readable tables."""
  lines = [f"# {report['head']} head, {report['backbone']} on "
           f"{report['dataset']}: {report['split']}", "",
           f"{report['num_samples']} examples; {report['evaluated']}.", "",
           "| metric | value |", "| --- | ---: |"]
  for key, label in KEY_METRICS:
    lines.append(f"| {label} | {_fmt(report[key])} |")
  for key in ("macro_precision", "macro_recall", "weighted_precision",
              "weighted_recall", "weighted_f1"):
    lines.append(f"| {key.replace('_', ' ')} | {_fmt(report[key])} |")
  lines += ["", f"Embedding metrics ({report['embedding_metric']} "
            f"distance):", "", "| metric | value |", "| --- | ---: |"]
  for key, value in report["embedding"].items():
    if isinstance(value, (int, float)):
      lines.append(f"| {key.replace('_', ' ')} | {_fmt(value)} |")
  lines += ["", "| class | precision | recall | F1 | support |",
            "| --- | ---: | ---: | ---: | ---: |"]
  for name, c in report["per_class"].items():
    lines.append(f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | "
                 f"{c['f1']:.4f} | {c['support']} |")
  return "\n".join(lines) + "\n"


def compare_runs(logdirs: Sequence[str], split: str = "test") -> str:
  """One markdown table of the key metrics of several evaluated runs."""
  reports = []
  for logdir in logdirs:
    path = pathlib.Path(logdir) / "eval" / split / "report.json"
    if not path.exists():
      raise UsageError(f"{path} not found: run `python eval.py "
                       f"--logdir={logdir} --split={split}` first.")
    reports.append(json.loads(path.read_text()))
  emb_keys = _embedding_keys(reports[0])
  header = (["run", "head", "backbone"] + [l for _, l in KEY_METRICS]
            + [l for _, l in emb_keys])
  lines = ["| " + " | ".join(header) + " |",
           "| " + " | ".join(["---"] * 3 + ["---:"] * (len(header) - 3))
           + " |"]
  for logdir, r in zip(logdirs, reports):
    cells = [str(logdir), r["head"], r["backbone"]]
    cells += [_fmt(r[k]) for k, _ in KEY_METRICS]
    cells += [_fmt(r["embedding"].get(k, math.nan)) for k, _ in emb_keys]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _fmt(value) -> str:
  if isinstance(value, float) and math.isnan(value):
    return "n/a"
  return f"{value:.4f}" if isinstance(value, float) else str(value)


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")
