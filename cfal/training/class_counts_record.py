"""`<logdir>/class_counts.json`: the training split's examples per class.

The runner writes it when a run starts (the chief, atomically), so that
evaluation has the training priors without rebuilding the data split:
eval.py's many/medium/few-shot groups and its post-hoc logit adjustment
read it. A run made before the file existed has none; eval.py then takes
the counts from the data split its config.json rebuilds (the split is
deterministic) and says so.

NumPy and the standard library only.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np

from cfal.training.run_dir import write_atomically

FILENAME = "class_counts.json"
FORMAT = "cfal-class-counts"


def counts_record(*, dataset: str, class_names: Sequence[str],
                  class_counts: Sequence[int],
                  imbalance_ratio: float) -> dict:
  """The file's content.

  Args:
    dataset: the dataset's name (`--dataset`).
    class_names: one name per class.
    class_counts: training examples per class.
    imbalance_ratio: the run's `--imbalance_ratio` (R of the long tail it
      asked for; 1 for the data as it is).

  Returns:
    `{"format", "version", "dataset", "split": "train", "imbalance_ratio",
    "largest_to_smallest" (the counts' own ratio, over classes with
    examples), "total", "class_names", "class_counts"}`.
  """
  counts = [int(c) for c in class_counts]
  present = [c for c in counts if c > 0]
  return {"format": FORMAT, "version": 1, "dataset": dataset,
          "split": "train", "imbalance_ratio": float(imbalance_ratio),
          "largest_to_smallest": (max(present) / min(present) if present
                                  else None),
          "total": sum(counts), "class_names": [str(n) for n in class_names],
          "class_counts": counts}


def write_class_counts(logdir: str | pathlib.Path, data: Any) -> None:
  """Writes `<logdir>/class_counts.json` for a loaded dataset (a
  `cfal.data.datasets.DataBundle`)."""
  config = data.config
  record = counts_record(
      dataset=data.name, class_names=data.class_names,
      class_counts=data.class_counts,
      imbalance_ratio=config.imbalance_ratio if config else 1.0)
  write_atomically(pathlib.Path(logdir) / FILENAME,
                   json.dumps(record, indent=1))


def read_class_counts(logdir: str | pathlib.Path) -> dict | None:
  """The record in `<logdir>/class_counts.json`, or None if the run has
  none (or it is not such a record)."""
  path = pathlib.Path(logdir) / FILENAME
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(record, dict) or record.get("format") != FORMAT:
    return None
  return record


def stored_counts(record: dict | None,
                  class_names: Sequence[str]) -> np.ndarray | None:
  """The record's counts as int64 `[C]` if it names exactly
  `class_names`, else None."""
  if record is None or list(record.get("class_names", [])) != [
      str(n) for n in class_names]:
    return None
  counts = np.asarray(record.get("class_counts", []), np.int64)
  return counts if counts.size == len(class_names) else None
