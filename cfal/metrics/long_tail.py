"""Many-, medium- and few-shot scores of a long-tailed evaluation.

Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR
2019 (OLTR), group the classes by their number of training images:
many-shot (more than 100), medium-shot (20 to 100) and few-shot (fewer
than 20), and report the accuracy of each group. Here each group gets

* `classes`: how many classes it has (and their names, `class_names`);
* `recall`: the mean per-class recall of its classes, i.e. the group's
  balanced accuracy (classes with no evaluated example are left out, as
  `balanced_accuracy` does);
* `accuracy`: correct predictions over all of the group's evaluated
  examples (an example counts as correct when it is predicted as its own
  class, whichever group the prediction falls in);
* `examples`: the group's evaluated examples.

A group without classes, or without evaluated examples, has `recall` and
`accuracy` None.

When Liu's thresholds leave a group empty (the smallest class has 20 or
more training images, the largest 100 or fewer, or no class falls in
between) the classes are split into thirds ranked by training count
instead, and the result says so (`rule`, with the thresholds used). Ties
stay together: a class is many-shot if it has at least as many images as
the smallest class of the top third, few-shot if at most as many as the
largest class of the bottom third.

NumPy only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Liu et al.'s thresholds: many-shot n > 100, few-shot n < 20.
MANY_SHOT_ABOVE = 100
FEW_SHOT_BELOW = 20
GROUPS = ("many", "medium", "few")


def shot_groups(class_counts: Sequence[float]) -> tuple[np.ndarray, dict]:
  """The group of each class, and the rule that made them.

  Args:
    class_counts: training images per class, `[C]`, >= 0.

  Returns:
    `(groups, rule)`: int `[C]` with 0 many-, 1 medium-, 2 few-shot, and
    `{"rule": "liu" or "thirds", "text": one line saying the thresholds}`
    (for thirds also `many_from`, the smallest many-shot count, and
    `few_to`, the largest few-shot count).
  """
  counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
  if counts.size == 0 or not np.all(np.isfinite(counts)) or np.any(
      counts < 0):
    raise ValueError("`class_counts` must be one finite count >= 0 per "
                     "class.")
  groups = np.where(counts > MANY_SHOT_ABOVE, 0,
                    np.where(counts < FEW_SHOT_BELOW, 2, 1))
  if all(np.any(groups == g) for g in range(3)):
    return groups, {
        "rule": "liu",
        "text": (f"Liu et al. 2019: many-shot n > {MANY_SHOT_ABOVE}, "
                 f"medium-shot {FEW_SHOT_BELOW} <= n <= {MANY_SHOT_ABOVE}, "
                 f"few-shot n < {FEW_SHOT_BELOW} training images")}
  # Thirds of the classes ranked by count (a stable sort: ties by class id
  # only decide the cut, not a class's group).
  order = np.argsort(-counts, kind="stable")
  top, _, bottom = np.array_split(order, 3)
  # (Fewer than 3 classes leave the bottom third empty: no few-shot.)
  many_from = _number(counts[top].min())
  few_to = _number(counts[bottom].max()) if bottom.size else None
  groups = np.where(counts >= many_from, 0,
                    np.where(counts <= (-1 if few_to is None else few_to),
                             2, 1))
  few = "none" if few_to is None else f"n <= {few_to}"
  return groups, {
      "rule": "thirds", "many_from": many_from, "few_to": few_to,
      "text": (f"Liu et al.'s thresholds (> {MANY_SHOT_ABOVE}, < "
               f"{FEW_SHOT_BELOW}) leave a group empty; thirds of the "
               f"classes by training count instead: many-shot n >= "
               f"{many_from}, few-shot {few}, medium-shot in between")}


def long_tail_report(class_counts: Sequence[float], confusion: np.ndarray,
                     class_names: Sequence[str] | None = None) -> dict:
  """Recall and accuracy of the many-, medium- and few-shot classes.

  Args:
    class_counts: training images per class, `[C]`.
    confusion: `[C, C]` evaluation counts, rows true class, columns
      predicted (as `cfal.metrics.classification`).
    class_names: C names (default "0", "1", ...).

  Returns:
    `{"rule": one line, "rule_name": "liu" or "thirds", "class_counts":
    {name: count}, "groups": {"many"|"medium"|"few": {"classes",
    "class_names", "min_count", "max_count", "examples", "recall",
    "accuracy"}}}`; see the module docstring.
  """
  counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
  cm = np.asarray(confusion, dtype=np.float64)
  num_classes = counts.size
  if cm.shape != (num_classes, num_classes):
    raise ValueError(f"`confusion` must be [{num_classes}, {num_classes}] "
                     f"for {num_classes} class counts, got {cm.shape}.")
  names = ([str(c) for c in range(num_classes)] if class_names is None
           else [str(n) for n in class_names])
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} classes.")
  groups, rule = shot_groups(counts)
  support = cm.sum(axis=1)
  correct = np.diag(cm)
  report_groups = {}
  for g, name in enumerate(GROUPS):
    members = np.flatnonzero(groups == g)
    seen = members[support[members] > 0]
    examples = float(support[members].sum())
    report_groups[name] = {
        "classes": int(members.size),
        "class_names": [names[c] for c in members],
        "min_count": _number(counts[members].min()) if members.size else None,
        "max_count": _number(counts[members].max()) if members.size else None,
        "examples": _number(examples),
        "recall": (float(np.mean(correct[seen] / support[seen]))
                   if seen.size else None),
        "accuracy": (float(correct[members].sum() / examples)
                     if examples > 0 else None),
    }
  return {"rule": rule["text"], "rule_name": rule["rule"],
          "class_counts": {n: _number(c) for n, c in zip(names, counts)},
          "groups": report_groups}


def _number(value: float) -> int | float:
  """A count as an int when it is whole (JSON and messages read better)."""
  value = float(value)
  return int(value) if value.is_integer() else value
