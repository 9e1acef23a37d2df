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


def table(header: Sequence[str], rows: Sequence[Sequence[str]],
          right_from: int = 1) -> str:
  """A markdown table; columns from `right_from` on are right-aligned."""
  lines = ["| " + " | ".join(header) + " |",
           "| " + " | ".join("---" if i < right_from else "---:"
                             for i in range(len(header))) + " |"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def total_seconds(runs: dict[str, Seeded], experiment: str,
                  results: pathlib.Path = RESULTS) -> float:
  """Training + evaluation seconds of every kept run of the experiment,
  tuning runs included."""
  total = 0.0
  for path in (results / experiment).rglob("result.json"):
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
