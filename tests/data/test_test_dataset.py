"""External test sets (`DataConfig.test_dataset`), e.g. CRC-VAL-HE-7K."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cfal.data import DataError, datasets, folder, pipeline
from cfal.data.config import DataConfig, check_data_config, has_test_split

SIZE = 6


def write(path, seed: int, mode: str = "RGB") -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (5, 7, 3), np.uint8)
  Image.fromarray(pixels).convert(mode).save(path)


@pytest.fixture(name="train_root")
def fixture_train_root(tmp_path):
  root = tmp_path / "train"
  for i in range(12):
    write(root / "abc"[i % 3] / f"slideA{i % 4}-{i}.png", i)
  return root


def config_for(train_root, test: str, **changes) -> DataConfig:
  return DataConfig(name=f"folder:{train_root}", image_size=SIZE,
                    validation_split=0.25, test_dataset=test, **changes)


def test_has_test_split():
  assert has_test_split("fashion_mnist") and has_test_split("mnist")
  assert not has_test_split("folder:x") and not has_test_split("csv:m.csv")
  assert has_test_split("folder:x", "folder:y")
  assert has_test_split("csv:m.csv", "csv:t.csv")
  assert not has_test_split("folder:x", None)


def test_test_dataset_settings_are_checked():
  with pytest.raises(ValueError, match="must be folder:<path> or csv:<path>"):
    check_data_config(DataConfig(name="folder:x", test_dataset="y"))
  with pytest.raises(ValueError, match="mnist has its own test split"):
    check_data_config(DataConfig(name="mnist", test_dataset="folder:y"))


def test_a_test_folder_is_loaded_whole_by_class_name(train_root, tmp_path):
  test_root = tmp_path / "test"
  for i in range(7):
    write(test_root / "cab"[i % 3] / f"t{i}.png", 100 + i, mode="L")
  bundle = datasets.load_data(config_for(train_root, f"folder:{test_root}",
                                         imbalance_ratio=2.0))
  test = bundle.test_source
  assert test is not None and len(test) == 7
  assert test.class_names == bundle.class_names == ("a", "b", "c")
  # Greyscale test files are decoded with the training set's channels.
  assert test.image_shape == bundle.image_shape == (SIZE, SIZE, 3)
  want_labels = {p: "abc".index(p.split("/")[0]) for p in test.paths}
  assert [want_labels[p] for p in test.paths] == list(test.labels)
  images = np.concatenate([x.numpy() for x, _ in pipeline.eval_dataset(
      test, np.arange(7), batch_size=3)])
  for image, path in zip(images, test.paths):
    want = folder.decode_image(tf.constant(str(test_root / path)),
                               image_size=(SIZE, SIZE), channels=3).numpy()
    np.testing.assert_allclose(image, want, rtol=0, atol=1e-6)
  record = datasets.split_record(bundle)
  assert record["test_dataset"] == f"folder:{test_root}"
  assert record["splits"]["test"]["files"] == 7


def test_a_csv_test_set_maps_labels_by_name(train_root, tmp_path):
  rows = ["label,path"]
  for i, cls in enumerate("cbacba"):
    write(tmp_path / "t" / f"{i}.png", 200 + i)
    rows.append(f"{cls},t/{i}.png")
  (tmp_path / "test.csv").write_text("\n".join(rows))
  bundle = datasets.load_data(config_for(train_root,
                                         f"csv:{tmp_path / 'test.csv'}"))
  test = bundle.test_source
  got = {path: test.class_names[label]
         for path, label in zip(test.paths, test.labels)}
  assert got == {f"t/{i}.png": cls for i, cls in enumerate("cbacba")}


def test_class_mismatch_is_one_line_naming_the_classes(train_root, tmp_path):
  test_root = tmp_path / "test"
  for i, cls in enumerate(["a", "b", "d", "e"]):
    write(test_root / cls / f"{i}.png", i)
  with pytest.raises(DataError) as err:
    datasets.load_data(config_for(train_root, f"folder:{test_root}"))
  assert str(err.value) == (
      f"{test_root}: the test set lacks the training class(es) c and has "
      "class(es) d, e that training lacks; it needs the same classes as the "
      "training set, by name.")


def test_test_files_are_checked_like_training_files(train_root, tmp_path):
  test_root = tmp_path / "test"
  for i in range(6):
    write(test_root / "abc"[i % 3] / f"{i}.png", i)
  (test_root / "a" / "broken.png").write_bytes(b"\x89PNG nothing")
  config = config_for(train_root, f"folder:{test_root}")
  with pytest.raises(DataError, match=r"1 of 7 image files \(14.3%\) are "
                     "unreadable"):
    datasets.load_data(config)
  bundle = datasets.load_data(config_for(train_root, f"folder:{test_root}",
                                         max_bad_fraction=0.2))
  assert len(bundle.test_source) == 6
  assert any(n.startswith(f"test set {test_root}: skipped 1 unreadable")
             for n in bundle.notes)


def test_groups_shared_with_training_are_reported(train_root, tmp_path):
  test_root = tmp_path / "test"
  for i in range(6):
    slide = "slideA1" if i == 0 else "slideB"
    write(test_root / "abc"[i % 3] / f"{slide}-{i}.png", i)
  write(test_root / "a" / "unnamed.png", 50)    # no group: fine in a test set
  bundle = datasets.load_data(config_for(
      train_root, f"folder:{test_root}", group_by=r"(?P<group>slide\w\d*)-"))
  assert bundle.test_source.groups.count(None) == 1
  assert bundle.group_counts["test"] == 2
  assert ("1 group(s) are in both the training set and the test set (e.g. "
          "slideA1): the test set is not independent of training"
          in bundle.notes)
