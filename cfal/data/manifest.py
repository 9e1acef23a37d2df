"""CSV manifests: `--dataset=csv:tiles.csv` lists the images and labels.

The file is UTF-8 text (a byte-order mark is fine) with a header line
naming its columns:

  path,label,group
  ADI/ADI-AAAFLCLY.tif,ADI,patient-07
  /data/extra/TUM-0001.tif,TUM,patient-31

`path` and `label` are required, `group` is optional (it is what
`--group_by=csv` splits by), other columns are ignored, in any order;
column names are matched without regard to case or surrounding spaces.
A relative path is relative to the folder holding the CSV. Labels are
class names; classes are numbered in sorted name order, as the
subfolders of an image folder are. Blank lines are skipped; fields with
commas are quoted as usual for CSV.

Rows whose file is missing or is not a readable image are skipped and
counted like the unreadable files of a folder (`max_bad_fraction`); a
file that is not CSV of this form (no header, a missing column, a row
with the wrong number of fields, an empty path or label, a file listed
twice) is a one-line `DataError` naming the line.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable

from cfal.data import folder, scan
from cfal.data.errors import DataError

__all__ = ["COLUMNS", "read_manifest"]

COLUMNS = ("path", "label", "group")
_EXPECTED = "path,label[,group]"


def read_manifest(
    csv_path: str | os.PathLike[str],
    *,
    require_groups: bool = False,
    verify: str = "full",
    num_workers: int = 8,
    use_cache: bool = True,
    progress: Callable[[scan.ScanProgress], None] | None = None,
) -> folder.FolderIndex:
  """Reads a CSV manifest and checks the images it lists.

  Args:
    csv_path: the manifest.
    require_groups: every row must name a group (`--group_by=csv`).
    verify, num_workers, use_cache, progress: as for
      `folder.scan_image_folder`; the scan cache is kept per manifest.

  Returns:
    A `FolderIndex` whose `relative_paths` are the paths as the rows write
    them and whose `groups` hold the group column (None without one).

  Raises:
    DataError: if the manifest is missing, unreadable or malformed (the
      message names the line), lists fewer than two classes, or every
      file of a class is unusable.
  """
  csv_path = os.fspath(csv_path)
  rows, has_groups = _parse(csv_path, require_groups)
  base = os.path.dirname(os.path.abspath(csv_path))
  class_names = tuple(sorted({label for _, _, label, _ in rows}))
  if len(class_names) < 2:
    raise DataError(
        f"{csv_path}: every row has the label {class_names[0]!r}; a "
        "classifier needs at least two classes")
  number = {name: i for i, name in enumerate(class_names)}
  # Grouped by class, each class in row order.
  rows = sorted(rows, key=lambda row: number[row[2]])
  items = [(number[label], _resolve(base, path), path)
           for _, path, label, _ in rows]
  result = scan.check_files(
      csv_path, [path for _, path, _ in items],
      [path for _, path, _ in items], kind="csv", verify=verify,
      num_workers=num_workers, use_cache=use_cache, progress=progress)

  def all_bad(label: int, count: int, path: str, reason: str) -> str:
    return (f"{csv_path}: all {count} files of class {class_names[label]} "
            f"are missing or unreadable (e.g. {path}: {reason})")

  return folder.build_index(
      class_names, items, result, all_bad=all_bad,
      groups=[group for *_, group in rows] if has_groups else None)


def _resolve(base: str, path: str) -> str:
  return os.path.normpath(path if os.path.isabs(path)
                          else os.path.join(base, path))


def _parse(csv_path: str, require_groups: bool
           ) -> tuple[list[tuple[int, str, str, str]], bool]:
  """(line, path, label, group) of every row, and whether a group column
  exists."""
  try:
    with open(csv_path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise DataError(f"{csv_path}: manifest not found") from None
  except OSError as e:
    raise DataError(f"{csv_path}: cannot read ({e.strerror or e})") from None
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataError(f"{csv_path} line {line}: not UTF-8 text; save the "
                    "manifest as UTF-8") from None
  reader = csv.reader(io.StringIO(text, newline=""), strict=True)
  header: list[str] | None = None
  columns: dict[str, int] = {}
  rows: list[tuple[int, str, str, str]] = []
  seen: dict[str, int] = {}
  base = os.path.dirname(os.path.abspath(csv_path))
  try:
    for row in reader:
      line = reader.line_num
      if not any(field.strip() for field in row):
        continue
      if header is None:
        header = [field.strip().lower() for field in row]
        columns = _columns(csv_path, line, row, header)
        if require_groups and "group" not in columns:
          raise DataError(
              f"{csv_path} line {line}: --group_by=csv needs a group "
              f"column, but the header is {','.join(row)}; add one "
              f"({_EXPECTED})")
        continue
      if len(row) != len(header):
        raise DataError(
            f"{csv_path} line {line}: {len(row)} field(s) where the header "
            f"has {len(header)} ({','.join(header)}); quote fields that "
            "contain commas")
      path = row[columns["path"]].strip()
      label = row[columns["label"]].strip()
      group = row[columns["group"]].strip() if "group" in columns else ""
      if not path:
        raise DataError(f"{csv_path} line {line}: empty path")
      if not label:
        raise DataError(f"{csv_path} line {line}: empty label for {path}")
      if require_groups and not group:
        raise DataError(f"{csv_path} line {line}: empty group for {path} "
                        "(--group_by=csv needs one on every row)")
      resolved = _resolve(base, path)
      if resolved in seen:
        raise DataError(f"{csv_path} line {line}: {path} is listed again "
                        f"(first on line {seen[resolved]}); list each file "
                        "once")
      seen[resolved] = line
      rows.append((line, path, label, group))
  except csv.Error as e:
    raise DataError(f"{csv_path} line {reader.line_num}: not valid CSV "
                    f"({e})") from None
  if header is None:
    raise DataError(f"{csv_path}: empty; expected a header line "
                    f"{_EXPECTED} and one row per image")
  if not rows:
    raise DataError(f"{csv_path}: a header but no rows; add one row per "
                    "image")
  return rows, "group" in columns


def _columns(csv_path: str, line: int, row: list[str],
             header: list[str]) -> dict[str, int]:
  """Where each known column is; a DataError for a header without
  `path` and `label` or with a column twice."""
  columns: dict[str, int] = {}
  for i, name in enumerate(header):
    if name in COLUMNS:
      if name in columns:
        raise DataError(f"{csv_path} line {line}: the header names column "
                        f"{name!r} twice; expected {_EXPECTED}")
      columns[name] = i
  missing = [name for name in ("path", "label") if name not in columns]
  if missing:
    raise DataError(
        f"{csv_path} line {line}: the header {','.join(row)!r} has no "
        f"{' or '.join(missing)} column; the first line must name the "
        f"columns: {_EXPECTED}")
  return columns
