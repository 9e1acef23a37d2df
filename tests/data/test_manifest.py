"""CSV manifests (cfal.data.manifest): `--dataset=csv:tiles.csv`."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cfal.data import DataError, datasets, folder, manifest, pipeline
from cfal.data.config import check_dataset_name

SIZE = 8


def write_png(path, seed: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (7, 9, 3), np.uint8)
  Image.fromarray(pixels).save(path, "PNG")


def write_csv(path, text: str) -> str:
  path.write_text(text, encoding="utf-8")
  return str(path)


@pytest.fixture(name="tiles")
def fixture_tiles(tmp_path):
  """tmp/data/{img}/*.png and a manifest at tmp/data/tiles.csv; one row
  points outside with an absolute path."""
  data = tmp_path / "data"
  for i in range(8):
    write_png(data / "img" / f"{i}.png", i)
  write_png(tmp_path / "elsewhere" / "far.png", 99)
  rows = ["path,label,group"]
  rows += [f"img/{i}.png,{'zeta' if i % 2 else 'alpha'},p{i // 2}"
           for i in range(8)]
  rows.append(f"{tmp_path / 'elsewhere' / 'far.png'},zeta,p9")
  return write_csv(data / "tiles.csv", "\n".join(rows) + "\n")


def one_line(err: pytest.ExceptionInfo) -> str:
  message = str(err.value)
  assert message and "\n" not in message
  return message


def test_check_dataset_name_accepts_csv():
  check_dataset_name("csv:tiles.csv")
  with pytest.raises(ValueError, match="csv:<path>"):
    check_dataset_name("csv:")
  with pytest.raises(ValueError, match="csv:<path>"):
    check_dataset_name("tiles.csv")


def test_read_manifest_resolves_paths_against_its_folder(tiles, tmp_path):
  index = manifest.read_manifest(tiles)
  assert index.class_names == ("alpha", "zeta")
  data = tmp_path / "data"
  assert index.paths == (
      *(str(data / "img" / f"{i}.png") for i in (0, 2, 4, 6)),
      *(str(data / "img" / f"{i}.png") for i in (1, 3, 5, 7)),
      str(tmp_path / "elsewhere" / "far.png"))
  assert index.relative_paths[:2] == ("img/0.png", "img/2.png")
  assert index.relative_paths[-1] == str(tmp_path / "elsewhere" / "far.png")
  np.testing.assert_array_equal(index.labels, [0] * 4 + [1] * 5)
  assert index.groups == ("p0", "p1", "p2", "p3", "p0", "p1", "p2", "p3",
                          "p9")
  assert index.bad_files == ()


def test_a_csv_dataset_trains_from_its_files(tiles):
  bundle = datasets.load_data(datasets.DataConfig(
      name=f"csv:{tiles}", image_size=SIZE, validation_split=0.25))
  assert bundle.class_names == ("alpha", "zeta")
  assert len(bundle.source) == 9
  index = manifest.read_manifest(tiles)
  images = np.concatenate([x.numpy() for x, _ in pipeline.eval_dataset(
      bundle.source, np.arange(9), batch_size=4)])
  for image, path in zip(images, index.paths):
    want = folder.decode_image(tf.constant(path), image_size=(SIZE, SIZE),
                               channels=3).numpy()
    np.testing.assert_allclose(image, want, rtol=0, atol=1e-6)


def test_columns_in_any_order_extra_columns_and_a_bom(tmp_path):
  for i in range(2):
    write_png(tmp_path / f"{i}.png", i)
  path = tmp_path / "m.csv"
  path.write_bytes("\ufeff Label ,slide,PATH\n"
                   "a,s1,0.png\n\n  b , s2 , 1.png \n".encode("utf-8"))
  index = manifest.read_manifest(path)
  assert index.class_names == ("a", "b")
  assert index.groups is None
  assert index.relative_paths == ("0.png", "1.png")


def test_missing_and_unreadable_rows_count_as_bad_files(tmp_path):
  rows = ["path,label"]
  for i in range(40):
    write_png(tmp_path / f"{i}.png", i)
    rows.append(f"{i}.png,{'ab'[i % 2]}")
  rows.append("gone.png,a")
  (tmp_path / "junk.png").write_bytes(b"not an image")
  rows.append("junk.png,b")
  csv_path = write_csv(tmp_path / "m.csv", "\n".join(rows))
  config = datasets.DataConfig(name=f"csv:{csv_path}", image_size=SIZE,
                               max_bad_fraction=0.05)
  bundle = datasets.load_data(config)
  assert len(bundle.source) == 40
  note = next(n for n in bundle.notes if "skipped 2" in n)
  assert "gone.png (FileNotFoundError: No such file or directory)" in note
  assert "junk.png (UnidentifiedImageError" in note
  with pytest.raises(DataError) as err:
    datasets.load_data(dataclasses_replace(config, max_bad_fraction=0.01))
  message = one_line(err)
  assert "2 of 42 image files (4.8%)" in message
  assert "--max_bad_fraction" in message


def dataclasses_replace(config, **changes):
  import dataclasses  # pylint: disable=import-outside-toplevel
  return dataclasses.replace(config, **changes)


def test_a_class_with_only_bad_rows_is_an_error(tmp_path):
  write_png(tmp_path / "ok.png", 0)
  csv_path = write_csv(tmp_path / "m.csv",
                       "path,label\nok.png,a\ngone.png,b\nlost.png,b\n")
  with pytest.raises(DataError) as err:
    manifest.read_manifest(csv_path)
  assert one_line(err) == (
      f"{csv_path}: all 2 files of class b are missing or unreadable "
      f"(e.g. {tmp_path / 'gone.png'}: FileNotFoundError: No such file or "
      "directory)")


@pytest.mark.parametrize("text, line, words", [
    ("file,label\nx.png,a\n", 1, "has no path column"),
    ("path,class\nx.png,a\n", 1, "has no label column"),
    ("x.png,a\ny.png,b\n", 1, "has no path or label column"),
    ("\n\npath,label,path\n", 3, "names column 'path' twice"),
    ("path,label\nx.png,a\ny.png\n", 3, "1 field(s) where the header has 2"),
    ("path,label\nx.png,a,extra\n", 2, "3 field(s) where the header has 2"),
    ("path,label\n,a\n", 2, "empty path"),
    ("path,label\nx.png,  \n", 2, "empty label for x.png"),
    ("path,label\nx.png,a\n\n./x.png,b\n", 4,
     "x.png is listed again (first on line 2)"),
    ('path,label\n"x\n.png",a\n"y.png"z,b\n', 4,
     "not valid CSV (',' expected after '\"')"),
    ('path,label\nx.png,a\n"y.png,b\n', 3,
     "not valid CSV (unexpected end of data)"),
])
def test_malformed_manifests_name_the_line(tmp_path, text, line, words):
  csv_path = write_csv(tmp_path / "m.csv", text)
  with pytest.raises(DataError) as err:
    manifest.read_manifest(csv_path)
  message = one_line(err)
  assert message.startswith(f"{csv_path} line {line}: "), message
  assert words in message


def test_not_utf8_names_the_line(tmp_path):
  path = tmp_path / "m.csv"
  path.write_bytes(b"path,label\nx.png,a\ny\xe9.png,b\n")
  with pytest.raises(DataError) as err:
    manifest.read_manifest(path)
  assert one_line(err) == (f"{path} line 3: not UTF-8 text; save the "
                           "manifest as UTF-8")


@pytest.mark.parametrize("text, words", [
    ("", "empty; expected a header line path,label[,group]"),
    ("path,label\n", "a header but no rows"),
    ("path,label\nx.png,a\n", "every row has the label 'a'"),
])
def test_empty_or_single_class_manifests(tmp_path, text, words):
  write_png(tmp_path / "x.png", 0)
  csv_path = write_csv(tmp_path / "m.csv", text)
  with pytest.raises(DataError) as err:
    manifest.read_manifest(csv_path)
  assert words in one_line(err)


def test_missing_manifest(tmp_path):
  with pytest.raises(DataError) as err:
    datasets.load_data(datasets.DataConfig(
        name=f"csv:{tmp_path / 'nope.csv'}"))
  assert one_line(err) == f"{tmp_path / 'nope.csv'}: manifest not found"


def test_manifest_scans_are_cached(tiles, tmp_path, monkeypatch):
  when = time.time_ns() - 60 * 10**9
  for path in tmp_path.rglob("*.png"):
    os.utime(path, ns=(when, when))
  first = manifest.read_manifest(tiles)
  assert first.verified == 9 and first.cache_file
  calls = []
  monkeypatch.setattr("cfal.data.scan.probe",
                      lambda path, full: calls.append(path))
  again = manifest.read_manifest(tiles)
  assert calls == [] and again.reused == 9 and again.paths == first.paths
