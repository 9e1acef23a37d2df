"""The scan cache (cfal.data.scan): Pillow checks each file once.

Files are aged (their modification time set a minute back) where a test
expects them cached: files modified within `RACY_SECONDS` of a scan are
checked but never cached.
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from cfal.data import folder, scan

MINUTE_NS = 60 * 10**9


def write_png(path, seed: int, side: int = 6) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3),
                                                np.uint8)
  Image.fromarray(pixels).save(path, "PNG")


def age(*paths, back_ns: int = MINUTE_NS) -> None:
  """Sets the modification time of each file (every file below each
  folder) `back_ns` into the past."""
  when = time.time_ns() - back_ns
  for path in paths:
    if path.is_dir():
      for sub in path.rglob("*"):
        if sub.is_file():
          os.utime(sub, ns=(when, when))
    else:
      os.utime(path, ns=(when, when))


@pytest.fixture(name="tree")
def fixture_tree(tmp_path):
  root = tmp_path / "tiles"
  for i in range(6):
    write_png(root / ("a" if i % 2 else "b") / f"t{i}.png", i)
  age(root)
  return root


@pytest.fixture(name="probes")
def fixture_probes(monkeypatch):
  """Paths Pillow was asked to check, in order."""
  seen: list[str] = []
  real = scan.probe

  def counting(path, full):
    seen.append(os.path.basename(path))
    return real(path, full)

  monkeypatch.setattr(scan, "probe", counting)
  return seen


def cache_files() -> list[str]:
  folder_ = scan.scan_cache_dir()
  return sorted(os.listdir(folder_)) if os.path.isdir(folder_) else []


def test_second_scan_decodes_nothing(tree, probes):
  first = folder.scan_image_folder(tree)
  assert first.verified == 6 and first.reused == 0
  assert len(probes) == 6
  assert first.cache_file and first.cache_file.startswith(
      scan.scan_cache_dir())
  probes.clear()
  second = folder.scan_image_folder(tree)
  assert probes == []
  assert second.verified == 0 and second.reused == 6
  assert second.paths == first.paths
  np.testing.assert_array_equal(second.labels, first.labels)
  assert second.channels == first.channels
  assert second.cache_file == first.cache_file


def test_the_data_folder_is_left_alone(tree):
  before = sorted(str(p) for p in tree.rglob("*"))
  folder.scan_image_folder(tree)
  folder.scan_image_folder(tree)
  assert sorted(str(p) for p in tree.rglob("*")) == before
  assert len(cache_files()) == 1


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("CFAL_CACHE_DIR", str(tmp_path / "elsewhere"))
  assert scan.scan_cache_dir() == str(tmp_path / "elsewhere" / "scans")
  monkeypatch.delenv("CFAL_CACHE_DIR")
  assert scan.scan_cache_dir() == os.path.expanduser("~/.cache/cfal/scans")


def test_only_added_and_changed_files_are_decoded_again(tree, probes):
  folder.scan_image_folder(tree)
  probes.clear()
  write_png(tree / "a" / "new.png", 50)                  # added
  os.remove(tree / "b" / "t0.png")                        # removed
  age(tree / "a" / "t1.png", back_ns=2 * MINUTE_NS)       # touched only
  changed = tree / "b" / "t2.png"                         # now corrupt
  changed.write_bytes(changed.read_bytes()[:40])
  age(tree / "a" / "new.png", changed)
  index = folder.scan_image_folder(tree)
  assert sorted(probes) == ["new.png", "t1.png", "t2.png"]
  assert index.verified == 3 and index.reused == 3
  assert str(tree / "b" / "t0.png") not in index.paths
  assert str(tree / "a" / "new.png") in index.paths
  assert [p for p, _ in index.bad_files] == [str(changed)]
  with open(index.cache_file, encoding="utf-8") as f:
    keys = set(json.load(f)["files"])
  assert keys == {"a/t1.png", "a/t3.png", "a/t5.png", "a/new.png",
                  "b/t2.png", "b/t4.png"}
  probes.clear()
  again = folder.scan_image_folder(tree)      # the bad file is cached too
  assert probes == [] and again.bad_files == index.bad_files


def test_a_file_changed_with_the_same_size_is_found(tree, probes):
  folder.scan_image_folder(tree)
  path = tree / "a" / "t1.png"
  size = path.stat().st_size
  write_png(path, 99)                 # other pixels, same size PNG
  assert path.stat().st_size == size
  age(path, back_ns=MINUTE_NS // 2)
  probes.clear()
  folder.scan_image_folder(tree)
  assert probes == ["t1.png"]


def test_files_modified_just_before_the_scan_are_not_cached(tmp_path,
                                                            probes):
  root = tmp_path / "fresh"
  for i in range(4):
    write_png(root / f"c{i % 2}" / f"{i}.png", i)
  folder.scan_image_folder(root)
  probes.clear()
  folder.scan_image_folder(root)
  assert len(probes) == 4           # still within RACY_SECONDS: rechecked
  age(root)
  folder.scan_image_folder(root)
  probes.clear()
  folder.scan_image_folder(root)
  assert probes == []


@pytest.mark.parametrize("garbage", [
    b"{not json", b"", b"\x00\xff" * 10, b"[]", b'{"format": "cfal-scan"}',
    None])
def test_a_corrupt_cache_means_a_full_scan(tree, probes, garbage):
  first = folder.scan_image_folder(tree)
  path = first.cache_file
  if garbage is None:   # valid JSON, wrong entries: those are rechecked
    data = json.loads(open(path, encoding="utf-8").read())
    data["files"]["a/t1.png"] = ["big", 1, "full", 3, None]
    data["files"]["a/t3.png"] = [1, 2]
    open(path, "w", encoding="utf-8").write(json.dumps(data))
  else:
    open(path, "wb").write(garbage)
  probes.clear()
  index = folder.scan_image_folder(tree)
  assert len(probes) == (2 if garbage is None else 6)
  assert index.paths == first.paths
  probes.clear()
  folder.scan_image_folder(tree)           # rewritten, whole again
  assert probes == []


def test_a_cache_of_another_folder_is_not_used(tree, tmp_path, probes):
  first = folder.scan_image_folder(tree)
  data = json.loads(open(first.cache_file, encoding="utf-8").read())
  data["source"] = str(tmp_path / "other")
  open(first.cache_file, "w", encoding="utf-8").write(json.dumps(data))
  probes.clear()
  folder.scan_image_folder(tree)
  assert len(probes) == 6


def test_an_unwritable_cache_is_skipped_quietly(tree, tmp_path, monkeypatch,
                                                probes):
  blocker = tmp_path / "a-file"
  blocker.write_text("not a folder")
  monkeypatch.setenv("CFAL_CACHE_DIR", str(blocker))
  index = folder.scan_image_folder(tree)
  assert index.cache_file is None and len(index.paths) == 6
  index = folder.scan_image_folder(tree)
  assert len(probes) == 12


def test_use_cache_false_reads_and_writes_nothing(tree, probes):
  folder.scan_image_folder(tree, use_cache=False)
  assert cache_files() == []
  folder.scan_image_folder(tree)
  probes.clear()
  index = folder.scan_image_folder(tree, use_cache=False)
  assert len(probes) == 6 and index.cache_file is None


def test_header_checks_are_redone_for_a_full_check(tree, probes):
  folder.scan_image_folder(tree, verify="header")
  probes.clear()
  folder.scan_image_folder(tree, verify="header")
  assert probes == []
  folder.scan_image_folder(tree)              # full: decode them now
  assert len(probes) == 6
  probes.clear()
  folder.scan_image_folder(tree, verify="header")   # full serves header
  folder.scan_image_folder(tree)
  assert probes == []


def test_missing_files_are_bad_without_pillow(tmp_path, probes):
  write_png(tmp_path / "x.png", 1)
  result = scan.check_files(
      str(tmp_path), ["x.png", "gone.png"],
      [str(tmp_path / "x.png"), str(tmp_path / "gone.png")], kind="csv")
  assert result.checks[0] == scan.Check(3, None)
  assert result.checks[1].channels == 0
  assert result.checks[1].reason == (
      "FileNotFoundError: No such file or directory")
  assert probes == ["x.png"]


def test_progress_reports_while_checking(tmp_path, monkeypatch):
  monkeypatch.setattr(scan, "_CHUNK", 2)
  paths = []
  for i in range(5):
    write_png(tmp_path / f"{i}.png", i)
    paths.append(str(tmp_path / f"{i}.png"))
  (tmp_path / "bad.png").write_bytes(b"nope")
  paths.append(str(tmp_path / "bad.png"))
  reports: list[scan.ScanProgress] = []
  scan.check_files("tiles", [os.path.basename(p) for p in paths], paths,
                   kind="folder", progress=reports.append, progress_every=0,
                   use_cache=False)
  assert [r.checked for r in reports] == [2, 4, 6, 6]
  assert [r.done for r in reports] == [False, False, False, True]
  assert reports[-1].bad == 1 and reports[-1].total == 6
  line = str(reports[1])
  assert line.startswith("Checking image files in tiles: 4/6 (67%), "
                         "0 unreadable") or line.startswith(
                             "Checking image files in tiles: 4/6 (67%),")
  assert "\n" not in line and "files/s" in line
  assert str(reports[-1]).startswith("Checked 6 image files in tiles in ")
  assert str(reports[-1]).endswith(", 1 unreadable.")
  quiet: list[scan.ScanProgress] = []
  scan.check_files("tiles", ["0.png"], paths[:1], kind="folder",
                   progress=quiet.append, use_cache=False)
  assert quiet == []              # quick scans say nothing


def test_print_progress_rewrites_one_line_on_a_terminal():
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  progress = [scan.ScanProgress("t", 1, 4, 0, 1.0),
              scan.ScanProgress("t", 4, 4, 0, 2.0, done=True)]
  term, log = Terminal(), io.StringIO()
  for stream in (term, log):
    report = scan.print_progress(stream)
    for p in progress:
      report(p)
  assert log.getvalue() == "".join(f"{p}\n" for p in progress)
  assert term.getvalue() == "".join(
      f"\r\x1b[2K{p}" for p in progress) + "\n"
  assert str(progress[0]) == ("Checking image files in t: 1/4 (25%), "
                              "1 files/s, about 3s left")
  assert str(progress[1]) == "Checked 4 image files in t in 2s."


def test_load_data_passes_progress_to_every_scan(tree, tmp_path,
                                                 monkeypatch):
  from cfal.data import datasets  # pylint: disable=import-outside-toplevel
  test_root = tmp_path / "test"
  for i in range(4):
    write_png(test_root / "ab"[i % 2] / f"{i}.png", 20 + i)
  real = scan.check_files

  def eager(*args, **kwargs):
    return real(*args, **{**kwargs, "progress_every": 0.0})

  monkeypatch.setattr(scan, "check_files", eager)
  reports: list[scan.ScanProgress] = []
  datasets.load_data(datasets.DataConfig(
      name=f"folder:{tree}", image_size=4, test_dataset=f"folder:{test_root}"),
                     progress=reports.append)
  assert [(r.source, r.done) for r in reports] == [
      (str(tree), False), (str(tree), True),
      (str(test_root), False), (str(test_root), True)]
