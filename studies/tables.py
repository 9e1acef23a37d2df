"""Reading kept results and turning them into RESULTS.md's tables."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import statistics
from typing import Callable, Sequence

from studies.runner import RESULTS, ROOT, Experiment

DOCS = ROOT / "docs"


@dataclasses.dataclass
class Seeded:
  """One run of an experiment: its kept record and reports, by seed."""

  name: str
  records: dict[int, dict]
  reports: dict[int, dict]        # the first evaluation's report, by seed
  folder: pathlib.Path

  @property
  def seeds(self) -> list[int]:
    return sorted(self.records)

  def values(self, key: str | Callable[[dict], float]) -> list[float]:
    get = key if callable(key) else (lambda r: _lookup(r, key))
    return [float(get(self.reports[s])) for s in self.seeds]

  def report(self, evaluation: str, seed: int) -> dict:
    return json.loads((self.folder / f"seed-{seed}" /
                       f"{evaluation}.json").read_text())

  def train_seconds(self) -> list[float]:
    return [self.records[s]["train_seconds"] for s in self.seeds]

  def train_time(self) -> str:
    """Mean training time per seed, marked * when a seed was resumed
    after an interruption (its time counts only the last attempt)."""
    resumed = any(self.records[s].get("resumed") for s in self.seeds)
    return (minutes(sum(self.train_seconds()) / len(self.seeds))
            + ("*" if resumed else ""))

  def flag(self, name: str, seed: int | None = None):
    """The value train.py got for --name in this run: from the runner's
    flags, else from its flagfiles (the last one setting it), else None."""
    record = self.records[self.seeds[0] if seed is None else seed]
    if name in record["flags"]:
      return record["flags"][name]
    value = None
    for arg in record["train_command"]:
      if arg.startswith("--flagfile="):
        found = _flagfile_value(ROOT / arg.split("=", 1)[1], name)
        value = found if found is not None else value
      elif arg.startswith(f"--{name}="):
        value = arg.split("=", 1)[1]
    return value


def _flagfile_value(path: pathlib.Path, name: str, depth: int = 0):
  """The last value a flagfile (and those it includes) gives --name."""
  value = None
  if depth > 10 or not path.is_file():
    return None
  for line in path.read_text().splitlines():
    line = line.strip()
    if line.startswith("--flagfile="):
      found = _flagfile_value(ROOT / line.split("=", 1)[1], name, depth + 1)
      value = found if found is not None else value
    elif line.startswith(f"--{name}="):
      value = line.split("=", 1)[1]
  return value


def _lookup(report: dict, key: str):
  value = report
  for part in key.split("."):
    value = value[part]
  return value


def load(experiment: Experiment,
         results: pathlib.Path = RESULTS) -> dict[str, Seeded]:
  """Every run of `experiment` with at least one finished seed."""
  found = {}
  for run in experiment.runs:
    folder = results / experiment.name / run.name
    records, reports = {}, {}
    first = next(iter(run.evals))
    for seed in experiment.seeds_of(run):
      kept = folder / f"seed-{seed}"
      if (kept / "result.json").exists():
        records[seed] = json.loads((kept / "result.json").read_text())
        reports[seed] = json.loads((kept / f"{first}.json").read_text())
    if records:
      found[run.name] = Seeded(run.name, records, reports, folder)
  return found


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
  """"0.912 ± 0.004" (sample standard deviation), or the single value."""
  if not values:
    return "–"
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return (f"{statistics.mean(values):.{digits}f} ± "
          f"{statistics.stdev(values):.{digits}f}")


def minutes(seconds: float) -> str:
  return f"{seconds / 60:.1f} min"


def duration(seconds: float) -> str:
  """"38 min" under two hours, else "2.4 h"."""
  if seconds < 7200:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


def table(header: Sequence[str], rows: Sequence[Sequence[str]],
          right_from: int = 1) -> str:
  """A markdown table; columns from `right_from` on are right-aligned."""
  lines = ["| " + " | ".join(header) + " |",
           "| " + " | ".join("---" if i < right_from else "---:"
                             for i in range(len(header))) + " |"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def total_seconds(experiment: str, results: pathlib.Path = RESULTS,
                  pattern: str = "*") -> float:
  """Training + evaluation seconds of every kept run of the experiment
  whose name matches `pattern` (a glob), tuning runs included."""
  total = 0.0
  for path in (results / experiment).glob(f"{pattern}/**/result.json"):
    record = json.loads(path.read_text())
    total += record["train_seconds"] + sum(record["eval_seconds"].values())
  return total


def picture(source: pathlib.Path, name: str) -> str:
  """Copies a kept picture to docs/ and returns its RESULTS.md path."""
  DOCS.mkdir(exist_ok=True)
  shutil.copyfile(source, DOCS / name)
  return f"docs/{name}"


def paired_difference(a: Sequence[float], b: Sequence[float]) -> str:
  """Mean and sample sd of a - b over paired seeds, with each seed's sign."""
  diffs = [x - y for x, y in zip(a, b)]
  if not diffs:
    return "–"
  wins = sum(d > 0 for d in diffs)
  sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
  return (f"{statistics.mean(diffs):+.3f} (sd {sd:.3f}; higher on "
          f"{wins} of {len(diffs)} seeds)")


def picture_row(runs: dict[str, Seeded], names: Sequence[str],
                experiment: str, caption: str,
                kept: str = "embeddings.png") -> list[str]:
  """RESULTS.md lines showing each named run's first-seed picture side by
  side under `caption` ("{seed}" is replaced by that seed); [] if none of
  the runs has finished."""
  shown = [n for n in names if n in runs]
  if not shown:
    return []
  cells = []
  for n in shown:
    run = runs[n]
    path = picture(run.folder / f"seed-{run.seeds[0]}" / kept,
                   f"{experiment}_{n}.png")
    cells.append(f"![{n}]({path})")
  return ["", caption.format(seed=runs[shown[0]].seeds[0]), "",
          "| " + " | ".join(f"`{n}`" for n in shown) + " |",
          "| " + " | ".join("---" for _ in shown) + " |",
          "| " + " | ".join(cells) + " |"]


# -- Long-tail comparisons (experiment 3 and the histology study) -------------

GROUPS = ("many", "medium", "few")
LONG_TAIL_HEADER = ("head", "seeds", "balanced accuracy", "macro-F1",
                    "many-shot recall", "medium-shot recall",
                    "few-shot recall", "MAP@R", "train time")


def long_tail_cells(runs: dict[str, Seeded],
                    rows: Sequence[tuple[str, str, str]]) -> dict[str, dict]:
  """The finished rows of a long-tail table, with their per-seed values.

  Args:
    runs: the experiment's kept runs (`load`).
    rows: (label, run name, evaluation) per row, in table order; rows
      whose run has no finished seed are left out.

  Returns:
    label -> {"run": Seeded, "seeds": [...], "rule": the groups' rule,
    "values": {metric: [one value per seed]}} with the metrics
    balanced_accuracy, macro_f1, map_at_r and the groups' recalls.
  """
  cells = {}
  for label, name, evaluation in rows:
    run = runs.get(name)
    if run is None:
      continue
    reports = [run.report(evaluation, s) for s in run.seeds]
    values = {"balanced_accuracy": [r["balanced_accuracy"] for r in reports],
              "macro_f1": [r["macro_f1"] for r in reports],
              "map_at_r": [r["embedding"]["map_at_r"] for r in reports]}
    for g in GROUPS:
      values[g] = [r["long_tail"]["groups"][g]["recall"] for r in reports]
    for name in reports[0]["per_class"]:
      values[f"recall:{name}"] = [r["per_class"][name]["recall"]
                                  for r in reports]
    cells[label] = {"run": run, "seeds": run.seeds, "values": values,
                    "rule": reports[0]["long_tail"]["rule"],
                    "class_counts": reports[0]["long_tail"]["class_counts"]}
  return cells


def long_tail_table(cells: dict[str, dict]) -> str:
  """Balanced accuracy, macro-F1, recall per shot group, MAP@R and train
  time of each row, mean ± sd over seeds."""
  rows = [[label, str(len(c["seeds"])),
           mean_sd(c["values"]["balanced_accuracy"]),
           mean_sd(c["values"]["macro_f1"]),
           *(mean_sd(c["values"][g]) for g in GROUPS),
           mean_sd(c["values"]["map_at_r"]),
           c["run"].train_time()]
          for label, c in cells.items()]
  return table(LONG_TAIL_HEADER, rows, right_from=1)


def tuning_rows(experiment: Experiment, results: pathlib.Path,
                label: Callable[[str], str] = lambda name: name
                ) -> list[list[str]]:
  """Rows of a tuning table: a tuned run's `label(name)` and the
  validation score of each grid point tried (the chosen one in bold)."""
  # pylint: disable=import-outside-toplevel
  from studies.runner import point_name
  rows = []
  for run in experiment.runs:
    if run.grid is None:
      continue
    scored = []
    for point in run.grid.points():
      path = (results / experiment.name / run.name / "tune" /
              point_name(point) / f"seed-{run.grid.seed}" / "validation.json")
      if path.exists():
        scored.append((json.loads(path.read_text())[run.grid.metric], point))
    if not scored:
      continue
    best = max(scored, key=lambda item: item[0])[1]
    tried = ", ".join(
        (f"**{point_name(p)}: {v:.3f}**" if p == best
         else f"{point_name(p)}: {v:.3f}") for v, p in scored)
    rows.append([f"`{label(run.name)}`", tried])
  return rows


def group_bars(cells: dict[str, dict], title: str, name: str) -> str:
  """Grouped bars of many/medium/few-shot recall (mean ± sd over seeds)
  drawn into docs/<name>; returns its RESULTS.md path."""
  # pylint: disable=import-outside-toplevel
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  labels = list(cells)
  fig, ax = plt.subplots(figsize=(10, 4.2), dpi=100)
  width = 0.27
  x = np.arange(len(labels))
  for i, g in enumerate(GROUPS):
    means = [np.mean(cells[l]["values"][g]) for l in labels]
    sds = [np.std(cells[l]["values"][g], ddof=1)
           if len(cells[l]["seeds"]) > 1 else 0.0 for l in labels]
    ax.bar(x + (i - 1) * width, means, width, yerr=sds, capsize=2,
           label=f"{g}-shot classes")
  ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("test recall (mean of the group's classes)")
  ax.set_ylim(0, 1.12)
  ax.set_yticks(np.linspace(0, 1, 6))
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8, loc="upper center", ncol=3)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  DOCS.mkdir(exist_ok=True)
  fig.savefig(DOCS / name)
  plt.close(fig)
  return f"docs/{name}"


def paired_with_best(cells: dict[str, dict], metric: str,
                     mine: str = "CFAL"):
  """`(best, ours, theirs, eligible)`: the other row with the highest
  mean `metric` among `eligible`, the rows that ran every seed row `mine`
  ran (best first, then by mean), and both rows' values on `mine`'s seeds
  in the same order; None until both exist."""
  if mine not in cells:
    return None
  ours = cells[mine]
  baselines = {l: c for l, c in cells.items() if l != mine
               and set(c["seeds"]) >= set(ours["seeds"])}
  if not baselines:
    return None
  best = max(baselines, key=lambda l: statistics.mean(
      baselines[l]["values"][metric]))
  theirs = [baselines[best]["values"][metric][baselines[best]["seeds"]
                                              .index(s)]
            for s in ours["seeds"]]
  eligible = sorted(baselines, key=lambda l: -statistics.mean(
      baselines[l]["values"][metric]))
  return best, ours["values"][metric], theirs, eligible


def class_recall_table(cells: dict[str, dict],
                       class_names: Sequence[str]) -> str:
  """Test recall of the named classes per row, mean ± sd over seeds."""
  rows = [[label, *(mean_sd(c["values"][f"recall:{n}"]) for n in class_names)]
          for label, c in cells.items()]
  counts = next(iter(cells.values()))["class_counts"]
  return table(["head", *(f"{n} ({counts[n]:,})" for n in class_names)],
               rows, right_from=1)


def paired_interval(diffs: Sequence[float], level: float = 0.95):
  """The paired t-test's two-sided `level` interval for the mean of
  `diffs` (one difference per seed); None with fewer than two."""
  # pylint: disable=import-outside-toplevel
  from scipy import stats
  n = len(diffs)
  if n < 2:
    return None
  mean = statistics.mean(diffs)
  half = (stats.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(diffs)
          / math.sqrt(n))
  return mean - half, mean + half


def verdict(cells: dict[str, dict], where: str, metric: str = "few",
            what: str = "few-shot recall", mine: str = "CFAL") -> str | None:
  """One line: does `mine` beat the best other row on `metric`, by how
  much, with what spread over the seeds (None until both ran). The answer
  follows the paired t-test's 95% interval of the per-seed differences:
  yes when it lies above 0, no when below, not established otherwise."""
  paired = paired_with_best(cells, metric, mine)
  if paired is None:
    return None
  best, values, theirs, eligible = paired
  diffs = [a - b for a, b in zip(values, theirs)]
  n = len(diffs)
  interval = paired_interval(diffs)
  if interval is None:
    answer, ci = "not established (one seed)", ""
  else:
    low, high = interval
    answer = ("yes" if low > 0 else "no, it is lower" if high < 0
              else "not established")
    ci = f", 95% interval [{low:+.3f}, {high:+.3f}]"
  wins = sum(d > 0 for d in diffs)
  runner_up = (f"; next best {eligible[1]} "
               f"{statistics.mean(cells[eligible[1]]['values'][metric]):.3f}"
               if len(eligible) > 1 else "")
  return (f"{where}, {what}: **{answer}**. {mine} {mean_sd(values)} "
          f"against {mean_sd(theirs)} for {best}, the best of "
          f"{len(eligible)} baselines by its mean{runner_up}. Paired "
          f"difference {statistics.mean(diffs):+.3f}{ci} over {n} seeds "
          f"({mine} higher on {wins}).")


def verdicts(cells: dict[str, dict], where: str,
             mine: str = "CFAL") -> list[str]:
  """`verdict` on few-shot recall and on balanced accuracy, as list items,
  or one line saying the comparison cannot be made yet."""
  lines = [verdict(cells, where, metric, what, mine)
           for metric, what in (("few", "few-shot recall"),
                                ("balanced_accuracy", "balanced accuracy"))]
  if not all(lines):
    return [f"- {where}: {mine} and a baseline with its seeds have not "
            f"both run yet."]
  return [f"- {line}" for line in lines]
