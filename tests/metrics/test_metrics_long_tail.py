"""cfal.metrics.long_tail: many/medium/few-shot groups (Liu et al. 2019)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from cfal.metrics.long_tail import long_tail_report, shot_groups


def _confusion(labels, predictions, num_classes):
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, predictions), 1)
  return cm


def test_a_hand_computed_example():
  # Training counts: many {0: 500, 1: 150}, medium {2: 60, 3: 30},
  # few {4: 10, 5: 5}.
  counts = [500, 150, 60, 30, 10, 5]
  cm = np.array([[8, 2, 0, 0, 0, 0],     # class 0: 8 of 10 right
                 [1, 3, 0, 0, 0, 0],     # class 1: 3 of 4
                 [0, 0, 5, 5, 0, 0],     # class 2: 5 of 10
                 [2, 0, 0, 0, 0, 0],     # class 3: 0 of 2
                 [0, 0, 0, 0, 1, 3],     # class 4: 1 of 4
                 [6, 0, 0, 0, 0, 0]])    # class 5: 0 of 6
  report = long_tail_report(counts, cm, list("abcdef"))
  assert report["rule_name"] == "liu"
  many, medium, few = (report["groups"][g] for g in ("many", "medium", "few"))
  assert many["class_names"] == ["a", "b"] and many["classes"] == 2
  assert medium["class_names"] == ["c", "d"]
  assert few["class_names"] == ["e", "f"]
  # Mean recall: (8/10 + 3/4) / 2 = 0.775; accuracy (8 + 3) / 14.
  assert many["recall"] == pytest.approx(0.775, abs=1e-15)
  assert many["accuracy"] == pytest.approx(11 / 14, abs=1e-15)
  # (5/10 + 0/2) / 2 = 0.25; 5 / 12.
  assert medium["recall"] == pytest.approx(0.25, abs=1e-15)
  assert medium["accuracy"] == pytest.approx(5 / 12, abs=1e-15)
  # (1/4 + 0/6) / 2 = 0.125; 1 / 10.
  assert few["recall"] == pytest.approx(0.125, abs=1e-15)
  assert few["accuracy"] == pytest.approx(0.1, abs=1e-15)
  assert (many["examples"], medium["examples"], few["examples"]) == (14, 12,
                                                                    10)
  assert (few["min_count"], few["max_count"]) == (5, 10)
  assert report["class_counts"] == dict(zip("abcdef", counts))


def test_liu_thresholds_apply_with_ties_at_100_and_20():
  # Liu et al.: many is n > 100, few is n < 20; 100 and 20 are medium.
  counts = [101, 100, 21, 20, 19, 0]
  groups, rule = shot_groups(counts)
  np.testing.assert_array_equal(groups, [0, 1, 1, 1, 2, 2])
  assert rule["rule"] == "liu" and "n > 100" in rule["text"]


def test_scores_match_scikit_learn_on_random_predictions():
  rng = np.random.default_rng(3)
  counts = rng.integers(1, 5000, size=12)
  counts[:3] = [4000, 150, 7]          # every group has a class
  labels = np.repeat(np.arange(12), rng.integers(5, 40, size=12))
  predictions = np.where(rng.random(labels.size) < 0.6, labels,
                         rng.integers(0, 12, labels.size))
  report = long_tail_report(counts, _confusion(labels, predictions, 12))
  groups, _ = shot_groups(counts)
  for g, name in enumerate(("many", "medium", "few")):
    members = np.flatnonzero(groups == g)
    mask = np.isin(labels, members)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      recall = skm.recall_score(labels, predictions, labels=members,
                                average="macro", zero_division=0)
    assert report["groups"][name]["recall"] == pytest.approx(recall,
                                                             rel=1e-12)
    assert report["groups"][name]["accuracy"] == pytest.approx(
        np.mean(labels[mask] == predictions[mask]), rel=1e-12)
    assert report["groups"][name]["classes"] == members.size


def test_thirds_when_no_class_is_few_shot():
  # All above 100: Liu's medium and few groups would be empty.
  counts = [300, 5000, 150, 1200, 800, 200, 400, 120, 3000]
  groups, rule = shot_groups(counts)
  ranked = sorted(counts, reverse=True)        # 3 classes per third
  many = {c for c in counts if c >= ranked[2]}
  few = {c for c in counts if c <= ranked[6]}
  assert {c for c, g in zip(counts, groups) if g == 0} == many
  assert {c for c, g in zip(counts, groups) if g == 2} == few
  assert sum(groups == 1) == 3
  assert rule["rule"] == "thirds"
  assert (rule["many_from"], rule["few_to"]) == (ranked[2], ranked[6])
  assert f"many-shot n >= {ranked[2]}" in rule["text"]
  assert f"few-shot n <= {ranked[6]}" in rule["text"]


def test_thirds_keep_tied_classes_together_and_ten_classes_split_4_3_3():
  groups, _ = shot_groups([900, 800, 700, 600, 500, 400, 300, 200, 110,
                           105])
  assert [int(np.sum(groups == g)) for g in range(3)] == [4, 3, 3]
  # A tie across the cut goes to the larger group's side.
  groups, rule = shot_groups([500, 400, 400, 300, 200, 200])
  np.testing.assert_array_equal(groups, [0, 0, 0, 1, 2, 2])
  assert rule["many_from"] == 400 and rule["few_to"] == 200


def test_empty_groups_have_no_scores():
  # Balanced data: every class ties, so all are many-shot.
  cm = np.diag([5, 5, 5])
  report = long_tail_report([50, 50, 50], cm)
  assert report["groups"]["many"]["classes"] == 3
  assert report["groups"]["many"]["recall"] == 1.0
  for name in ("medium", "few"):
    group = report["groups"][name]
    assert group["classes"] == 0 and group["examples"] == 0
    assert group["recall"] is None and group["accuracy"] is None
    assert group["min_count"] is None
  # Two classes: the bottom third is empty, so there is no few-shot group.
  groups, rule = shot_groups([40, 30])
  np.testing.assert_array_equal(groups, [0, 1])
  assert rule["few_to"] is None and "few-shot none" in rule["text"]


def test_a_group_without_evaluated_examples_has_no_scores():
  counts = [500, 50, 5]
  cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # class 2 not evaluated
  few = long_tail_report(counts, cm)["groups"]["few"]
  assert few["classes"] == 1 and few["examples"] == 0
  assert few["recall"] is None and few["accuracy"] is None
  # A class without examples is left out of its group's mean recall.
  counts = [500, 50, 40, 5]
  cm = np.array([[3, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
  medium = long_tail_report(counts, cm)["groups"]["medium"]
  assert medium["recall"] == 1.0 and medium["classes"] == 2


def test_bad_inputs_are_one_line_errors():
  for counts in ([], [1, -1], [1, np.nan]):
    with pytest.raises(ValueError, match="class_counts"):
      shot_groups(counts)
  with pytest.raises(ValueError, match=r"\[2, 2\]"):
    long_tail_report([1, 2], np.eye(3))
