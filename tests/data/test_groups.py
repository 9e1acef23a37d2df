"""Validation splits of whole groups (cfal.data.groups) and split records."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from PIL import Image

from cfal.data import DataError, datasets, groups
from cfal.data.config import DataConfig, check_data_config


def random_case(rng: np.random.Generator):
  """Labels and groups of a random grouping: 1-30 groups of 1-40 files,
  2-6 classes, each group drawing its files from a few classes."""
  num_groups = int(rng.integers(1, 31))
  num_classes = int(rng.integers(2, 7))
  labels, names = [], []
  for g in range(num_groups):
    size = int(rng.integers(1, 41))
    mix = rng.choice(num_classes, size=int(rng.integers(1, num_classes + 1)),
                     replace=False)
    labels += list(rng.choice(mix, size=size))
    names += [f"g{g:02d}"] * size
  order = rng.permutation(len(labels))     # groups need not be contiguous
  return (np.asarray(labels)[order], np.asarray(names)[order],
          float(rng.choice([0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.9])),
          int(rng.integers(0, 1000)))


def test_group_split_properties_over_random_groupings():
  rng = np.random.default_rng(20240611)
  for case in range(200):
    labels, names, fraction, seed = random_case(rng)
    rest, held = groups.group_split(labels, names, fraction, seed)
    where = f"case {case}: fraction {fraction}, seed {seed}"
    # Every file in exactly one split.
    np.testing.assert_array_equal(np.sort(np.concatenate([rest, held])),
                                  np.arange(labels.size), err_msg=where)
    # No group on both sides.
    assert not set(names[rest]) & set(names[held]), where
    # Every class keeps training files.
    assert set(labels[rest]) == set(labels), where
    if fraction == 0:
      assert held.size == 0, where
    # Deterministic in the seed.
    again = groups.group_split(labels, names, fraction, seed)
    np.testing.assert_array_equal(again[0], rest, err_msg=where)
    np.testing.assert_array_equal(again[1], held, err_msg=where)
    assert rest.dtype == held.dtype == np.int64


def test_seeds_give_different_splits():
  labels = np.arange(400) % 4
  names = np.array([f"s{i // 10}" for i in range(400)])
  splits = {tuple(groups.group_split(labels, names, 0.25, seed)[1])
            for seed in range(5)}
  assert len(splits) == 5


def test_one_file_per_group_is_the_stratified_split():
  rng = np.random.default_rng(3)
  for _ in range(50):
    labels = rng.integers(0, 5, int(rng.integers(5, 300)))
    fraction = float(rng.uniform(0.0, 0.95))
    names = [f"f{i}" for i in range(labels.size)]
    _, held = groups.group_split(labels, names, fraction, seed=1)
    for c in np.unique(labels):
      n = int(np.sum(labels == c))
      want = min(math.floor(fraction * n + 0.5), n - 1)
      assert np.sum(labels[held] == c) == want


def test_groups_as_large_as_the_target_are_held_out_whole():
  # 10 slides of 100 tiles, each slide two classes: 20% is two slides.
  labels = np.array([(s % 2) * 2 + (i % 2) for s in range(10)
                     for i in range(100)])
  names = np.repeat([f"slide{s}" for s in range(10)], 100)
  rest, held = groups.group_split(labels, names, 0.2, seed=0)
  assert held.size == 200 and len(set(names[held])) == 2
  for c in range(4):
    assert np.sum(labels[held] == c) == 50


def test_group_split_checks_its_arguments():
  with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
    groups.group_split(np.zeros(3, int), ["a", "b", "c"], 1.0, 0)
  with pytest.raises(ValueError, match="2 groups for 3 labels"):
    groups.group_split(np.zeros(3, int), ["a", "b"], 0.5, 0)
  rest, held = groups.group_split(np.zeros(0, int), [], 0.5, 0)
  assert rest.size == held.size == 0


def test_groups_from_a_pattern_and_a_mismatch():
  paths = ["TUM/TUM-TCGA-AA-3510-01.tif", "ADI/ADI-TCGA-AB-0001-07.tif",
           "ADI/ADI-TCGA-AA-3510-02.tif"]
  pattern = r"TCGA-(?P<group>..-....)"
  assert groups.groups_from_pattern(paths, pattern, "folder:x") == (
      "AA-3510", "AB-0001", "AA-3510")
  with pytest.raises(DataError) as err:
    groups.groups_from_pattern(paths + ["NORM/NORM-AAAFLCLY.tif"], pattern,
                               "folder:x")
  message = str(err.value)
  assert "\n" not in message
  assert message.startswith(
      "folder:x: 1 of 4 file paths do not match --group_by=")
  assert "(e.g. NORM/NORM-AAAFLCLY.tif)" in message
  # An optional group that takes part in no match counts as a miss.
  with pytest.raises(DataError, match="2 of 3 file paths"):
    groups.groups_from_pattern(paths, r"(?P<group>AB-....)?-..\.tif", "x")


@pytest.mark.parametrize("group_by, words", [
    ("(?P<group>", "is not a regular expression"),
    ("TCGA-(..-....)", "has no named group"),
    ("csv", "not a manifest"),
])
def test_bad_group_by_settings_are_usage_errors(group_by, words):
  with pytest.raises(ValueError) as err:
    check_data_config(DataConfig(name="folder:/x", group_by=group_by))
  assert words in str(err.value) and "\n" not in str(err.value)


def test_group_by_is_for_file_datasets():
  with pytest.raises(ValueError, match="--group_by is for folder: and csv:"):
    check_data_config(DataConfig(name="mnist", group_by="(?P<group>x)"))
  check_data_config(DataConfig(name="csv:m.csv", group_by="csv"))
  check_data_config(DataConfig(name="csv:m.csv", group_by="column"))
  check_data_config(DataConfig(name="csv:m.csv", group_by="(?P<group>.)"))


# --- Through load_data

SIZE = 6


def write_tiles(root, slides: int = 12, per_slide: int = 4) -> None:
  """root/<class>/<class>-P<slide>-<n>.png; each slide has two classes."""
  rng = np.random.default_rng(0)
  for s in range(slides):
    for n in range(per_slide):
      cls = ("ADI", "TUM", "NORM")[(s + n % 2) % 3]
      path = root / cls / f"{cls}-P{s:03d}-{n}.png"
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (5, 5, 3), np.uint8)).save(path)


@pytest.fixture(name="tiles")
def fixture_tiles(tmp_path):
  root = tmp_path / "tiles"
  write_tiles(root)
  return root


def grouped(root, **changes) -> DataConfig:
  config = DataConfig(name=f"folder:{root}", image_size=SIZE,
                      validation_split=0.25, group_by=r"-(?P<group>P\d+)-")
  return dataclasses.replace(config, **changes)


def test_load_data_splits_a_folder_by_group(tiles):
  bundle = datasets.load_data(grouped(tiles))
  names = np.asarray(bundle.source.groups)
  train, held = bundle.train_indices, bundle.validation_indices
  assert not set(names[train]) & set(names[held])
  assert bundle.group_counts == {"train": 9, "validation": 3}
  note = next(n for n in bundle.notes if n.startswith("validation split by"))
  assert note.startswith("validation split by group: 3 groups, 12 files; "
                         "training: 9 groups, 36 files; validation holds ")
  assert "target 25.0%" in note
  for i in held:
    assert f"-{names[i]}-" in bundle.source.paths[i]


def test_a_file_outside_the_pattern_is_a_data_error(tiles):
  Image.new("RGB", (5, 5)).save(tiles / "ADI" / "stray.png")
  with pytest.raises(DataError) as err:
    datasets.load_data(grouped(tiles))
  message = str(err.value)
  assert "\n" not in message
  assert f"{tiles}: 1 of 49 file paths do not match" in message
  assert "(e.g. ADI/stray.png)" in message


def test_too_few_groups_for_the_fraction_is_a_usage_error(tmp_path):
  root = tmp_path / "two"
  write_tiles(root, slides=2, per_slide=20)
  with pytest.raises(ValueError) as err:
    datasets.load_data(grouped(root, validation_split=0.05))
  assert "no whole group fits into --validation_split=0.05" in str(err.value)


def test_group_by_the_csv_column(tmp_path):
  rows = ["path,label,group"]
  for i in range(24):
    path = tmp_path / f"{i}.png"
    Image.new("RGB", (4, 4), (i, 0, 0)).save(path)
    rows.append(f"{i}.png,{'xyz'[i % 3]},patient{i // 4}")
  (tmp_path / "m.csv").write_text("\n".join(rows))
  bundle = datasets.load_data(DataConfig(
      name=f"csv:{tmp_path / 'm.csv'}", image_size=SIZE, group_by="csv",
      validation_split=0.3))
  names = np.asarray(bundle.source.groups)
  assert not (set(names[bundle.train_indices])
              & set(names[bundle.validation_indices]))
  assert sum(bundle.group_counts.values()) == 6


def test_group_by_csv_needs_the_column_and_every_group(tmp_path):
  Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
  Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
  (tmp_path / "m.csv").write_text("path,label\na.png,x\nb.png,y\n")
  config = DataConfig(name=f"csv:{tmp_path / 'm.csv'}", group_by="csv")
  with pytest.raises(DataError, match="line 1: --group_by=csv needs a group "
                     "column, but the header is path,label"):
    datasets.load_data(config)
  (tmp_path / "m.csv").write_text("path,label,group\na.png,x,p1\nb.png,y,\n")
  with pytest.raises(DataError, match="line 3: empty group for b.png"):
    datasets.load_data(config)


def test_split_record_lists_every_file_once(tiles):
  bundle = datasets.load_data(grouped(tiles, imbalance_ratio=3.0))
  record = json.loads(json.dumps(datasets.split_record(bundle)))
  assert record["format"] == "cfal-splits" and record["version"] == 1
  assert record["group_by"] == r"-(?P<group>P\d+)-"
  assert record["columns"] == ["file", "class", "group"]
  assert record["class_names"] == ["ADI", "NORM", "TUM"]
  splits = record["splits"]
  assert set(splits) == {"train", "validation", "unused"}
  files = [e[0] for s in splits.values() for e in s["entries"]]
  assert sorted(files) == sorted(bundle.source.paths)
  for split in splits.values():
    assert split["files"] == len(split["entries"])
    assert split["groups"] == len({e[2] for e in split["entries"]})
    for path, cls, group in split["entries"]:
      assert path.startswith(f"{cls}/{cls}-{group}-")
  assert not ({e[2] for e in splits["validation"]["entries"]}
              & {e[2] for s in ("train", "unused")
                 for e in splits[s]["entries"]})


def test_split_record_of_an_in_memory_set():
  from cfal.data import pipeline  # pylint: disable=import-outside-toplevel
  source = pipeline.array_source(np.zeros((6, 2, 2), np.uint8),
                                 np.arange(6) % 2, ("a", "b"))
  bundle = datasets.DataBundle(
      name="toy", source=source, train_indices=np.array([0, 2, 3, 5]),
      validation_indices=np.array([1, 4]), test_source=source)
  record = datasets.split_record(bundle)
  assert record["splits"]["validation"] == {
      "files": 2, "groups": None, "entries": [[1, "b", None],
                                              [4, "a", None]]}
  assert record["splits"]["test"]["files"] == 6
  assert bundle.group_counts is None
  json.dumps(record)


def test_without_group_by_the_split_is_unchanged(tiles):
  plain = datasets.load_data(dataclasses.replace(grouped(tiles),
                                                 group_by=None))
  rest, held = datasets.stratified_split(plain.source.labels, 0.25, 0)
  np.testing.assert_array_equal(plain.validation_indices, held)
  np.testing.assert_array_equal(plain.train_indices, rest)
  assert plain.source.groups is None
