"""An evaluation as documents: report.json, report.md, predictions, figures.

Also the terminal summary eval.py prints and `compare_runs`' markdown
table of several evaluated runs. Nothing here runs a model: it renders an
`EvalResult` (`cfal.training.evaluator`) and a run's config.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from cfal.metrics.embedding import compactness_separation, retrieval_metrics
from cfal.viz.formats import figure_formats


def evaluation_report(result: Any, *, run: Any, logdir: str, split: str,
                      origin: str, metric: str, step: int | None,
                      progress: Callable[[int, int], None] | None = None,
                      long_tail: dict | None = None,
                      posthoc: dict | None = None,
                      prototypes: dict | None = None) -> dict:
  """report.json's content: the run, what was evaluated and every metric.

  Args:
    result: a `cfal.training.evaluator.EvalResult` holding every example.
    run: the run's `TrainConfig`.
    logdir: the run directory.
    split: "test" or "validation".
    origin: what was evaluated ("checkpoint ... (step N)", "SavedModel ...").
    metric: the head's embedding geometry, "cosine" or "euclidean".
    step: the training step of the weights, when known.
    progress: called as `progress(done, total)` while the retrieval
      metrics rank the queries (the slow part on large splits).
    long_tail: `cfal.metrics.long_tail.long_tail_report` of the result,
      kept as `report["long_tail"]`.
    posthoc: the post-hoc corrections the scores went through
      (`cfal.heads.posthoc.PostHoc.record`), kept as `report["posthoc"]`
      when there are any.
    prototypes: `cfal.metrics.embedding.prototype_geometry` of the
      result's embeddings and the head's prototypes, kept as
      `report["prototypes"]`.
  """
  report = {
      "run": str(logdir), "split": split, "evaluated": origin,
      "step": step, "head": run.model.head, "backbone": run.model.backbone,
      "dataset": run.data.name, "embedding_dim": run.model.embedding_dim,
      "embedding_metric": metric,
      **{k: v for k, v in result.report.items() if k != "loss"},
      "confusion_matrix": result.confusion.tolist(),
      "embedding": {
          **compactness_separation(result.embeddings, result.labels,
                                   metric=metric),
          **retrieval_metrics(result.embeddings, result.labels,
                              metric=metric, progress=progress),
      },
  }
  if np.isfinite(result.loss):
    report["loss"] = result.loss
  if long_tail is not None:
    report["long_tail"] = long_tail
  if posthoc:
    report["posthoc"] = posthoc
  if prototypes is not None:
    report["prototypes"] = prototypes
  return report


# The resolution of the pictures that go to TensorBoard, whatever --dpi.
TENSORBOARD_DPI = 100


def write_outputs(out: pathlib.Path, report: dict, result: Any,
                  prototypes: np.ndarray | None, *,
                  formats: Sequence[str] = ("png",),
                  dpi: float = 100) -> dict[str, bytes]:
  """Writes report.json, report.md, predictions.npz and the two pictures.

  The pictures, confusion_matrix and embeddings, are written once per
  format (embeddings.png, embeddings.pdf, ...). PDF and SVG keep text and
  axes as vectors and rasterise the scatter points
  (`cfal.viz.plots.figure_to_bytes`).

  Args:
    out: the output directory (made if missing).
    report: `evaluation_report`'s dict.
    result: the `cfal.training.evaluator.EvalResult` it was made from.
    prototypes: the head's prototypes to mark in the embedding picture,
      or None.
    formats: picture formats, any of `cfal.viz.formats.FIGURE_FORMATS`
      ("png", "pdf", "svg").
    dpi: resolution of the PNGs (and of the rasterised points in PDF and
      SVG, at least 200 there).

  Returns:
    Each picture's PNG bytes at `TENSORBOARD_DPI` by name
    ("confusion_matrix", "embeddings"), for TensorBoard; rendered even
    when "png" is not among `formats` (then no .png file is written).

  Raises:
    ValueError: an unknown format (before anything is written).
  """
  from cfal.viz import plots  # pylint: disable=import-outside-toplevel
  formats = figure_formats(formats)
  class_names = list(report["per_class"])
  out.mkdir(parents=True, exist_ok=True)
  (out / "report.json").write_text(json.dumps(report, indent=1,
                                              default=_json_default))
  (out / "report.md").write_text(markdown_report(report))
  np.savez_compressed(out / "predictions.npz", labels=result.labels,
                      predictions=result.predictions, scores=result.scores,
                      embeddings=result.embeddings,
                      class_names=np.array(class_names))
  title = figure_title(report)
  figures = {
      "confusion_matrix": plots.confusion_matrix_figure(
          np.asarray(report["confusion_matrix"]), class_names, title),
      "embeddings": plots.embedding_figure(
          result.embeddings, result.labels, class_names, title,
          prototypes=prototypes, metric=report["embedding_metric"]),
  }
  pngs = {}
  for name, figure in figures.items():
    # TensorBoard's copy is always at the default resolution, so a print
    # dpi never puts 10,000-pixel images into the event files.
    reuse = "png" in formats and dpi == TENSORBOARD_DPI
    files = plots.figure_to_bytes(figure, formats, dpi=dpi, close=reuse)
    for fmt in formats:
      (out / f"{name}.{fmt}").write_bytes(files[fmt])
    pngs[name] = files["png"] if reuse else plots.figure_to_bytes(
        figure, ("png",), dpi=TENSORBOARD_DPI)["png"]
  return pngs


def figure_title(report: dict) -> str:
  step = f", step {report['step']}" if report.get("step") is not None else ""
  return (f"{report['head']} head, {report['backbone']} on "
          f"{report['dataset']} - {report['split']}{step}")


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
  groups = report.get("long_tail", {}).get("groups", {})
  for name, group in groups.items():
    lines.append(f"  {name + '-shot recall':<24} {_fmt(group['recall'])}"
                 f"  ({group['classes']} classes)")
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
           f"{report['num_samples']} examples; {report['evaluated']}.", ""]
  for name, values in report.get("posthoc", {}).items():
    settings = ", ".join(f"{k.replace('_', ' ')} {v}"
                         for k, v in values.items())
    lines += [f"Post-hoc {name.replace('_', ' ')}: {settings}.", ""]
  lines += ["| metric | value |", "| --- | ---: |"]
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
  if "prototypes" in report:
    lines += ["", _prototype_line(report["prototypes"])]
  if "long_tail" in report:
    lines += ["", *_long_tail_lines(report["long_tail"])]
  lines += ["", "| class | precision | recall | F1 | support |",
            "| --- | ---: | ---: | ---: | ---: |"]
  for name, c in report["per_class"].items():
    lines.append(f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | "
                 f"{c['f1']:.4f} | {c['support']} |")
  return "\n".join(lines) + "\n"


def _prototype_line(geometry: dict) -> str:
  """report.md's sentence on where the prototypes sit (medians)."""
  count = geometry["num_classes"] * geometry["prototypes_per_class"]
  return (f"Prototypes (in the {geometry['space']}; medians over the "
          f"{geometry['measured']} of {count} prototypes with at least "
          f"{geometry['min_points']} points): |p| / |class mean| "
          f"{_fmt(geometry['norm_ratio_median'])}, cosine to the class mean "
          f"{_fmt(geometry['cosine_median'])}, fraction of the way to the "
          f"class mean {_fmt(geometry['fraction_to_mean_median'])}, "
          f"|p - class mean| {_fmt(geometry['offset_median'])} class radii.")


def _long_tail_lines(long_tail: dict) -> list[str]:
  """report.md's table of the many/medium/few-shot groups."""
  lines = [f"Long tail ({long_tail['rule']}):", "",
           "| group | classes | training images | examples | recall | "
           "accuracy |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for name, g in long_tail["groups"].items():
    span = ("-" if g["min_count"] is None else
            f"{g['min_count']}-{g['max_count']}")
    lines.append(f"| {name}-shot | {g['classes']} | {span} | "
                 f"{g['examples']} | {_fmt(g['recall'])} | "
                 f"{_fmt(g['accuracy'])} |")
  return lines


LONG_TAIL_GROUPS = ("many", "medium", "few")


def compare_runs(report_paths: Sequence[str | pathlib.Path]) -> str:
  """One markdown table of the key metrics of several evaluations, given
  their report.json files; each row is named by the evaluation's folder.
  When any has many/medium/few-shot groups, their recalls are columns
  too ("n/a" for an evaluation without them)."""
  reports = []
  names = []
  for path in map(pathlib.Path, report_paths):
    names.append(str(path.parent))
    reports.append(json.loads(path.read_text()))
  emb_keys = _embedding_keys(reports[0])
  long_tail = any("long_tail" in r for r in reports)
  header = (["run", "head", "backbone"] + [l for _, l in KEY_METRICS]
            + [l for _, l in emb_keys]
            + ([f"{g}-shot recall" for g in LONG_TAIL_GROUPS]
               if long_tail else []))
  lines = ["| " + " | ".join(header) + " |",
           "| " + " | ".join(["---"] * 3 + ["---:"] * (len(header) - 3))
           + " |"]
  for name, r in zip(names, reports):
    cells = [name, r["head"], r["backbone"]]
    cells += [_fmt(r[k]) for k, _ in KEY_METRICS]
    cells += [_fmt(r["embedding"].get(k, math.nan)) for k, _ in emb_keys]
    if long_tail:
      groups = r.get("long_tail", {}).get("groups", {})
      cells += [_fmt(groups.get(g, {}).get("recall")) for g in
                LONG_TAIL_GROUPS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _fmt(value) -> str:
  if value is None or isinstance(value, float) and math.isnan(value):
    return "n/a"
  return f"{value:.4f}" if isinstance(value, float) else str(value)


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")
