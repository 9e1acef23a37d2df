"""Long-tailed subsampling follows n_max * R^(-c/(C-1)) and is seeded."""

import numpy as np
import pytest

from cfal.data.long_tail import long_tailed_indices


def test_counts_follow_the_protocol():
  labels = np.repeat(np.arange(10), 6000)
  keep = long_tailed_indices(labels, 100.0, seed=0)
  counts = np.bincount(labels[keep], minlength=10)
  want = [round(6000 * 100 ** (-c / 9)) for c in range(10)]
  np.testing.assert_array_equal(counts, want)
  assert counts[0] == 6000 and counts[-1] == 60
  assert np.all(np.diff(keep) > 0)          # sorted, no repeats


def test_seed_fixes_the_subset_and_ratio_one_keeps_all():
  labels = np.random.default_rng(0).integers(0, 5, 1000)
  a = long_tailed_indices(labels, 10.0, seed=3)
  np.testing.assert_array_equal(a, long_tailed_indices(labels, 10.0, seed=3))
  assert not np.array_equal(a, long_tailed_indices(labels, 10.0, seed=4))
  # Ratio 1: every class keeps min(its size, n_max), i.e. everything.
  np.testing.assert_array_equal(long_tailed_indices(labels, 1.0),
                                np.arange(1000))


@pytest.mark.parametrize("ratio", [0.5, float("nan")])
def test_bad_ratio(ratio):
  with pytest.raises(ValueError, match="`imbalance_ratio`"):
    long_tailed_indices(np.arange(10) % 2, ratio)
