"""Local file lookup shared by the dataset loaders.

Loaders never download implicitly: they look for known file names in an
ordered list of candidate directories and take the first match.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["find_file", "unique_dirs"]


def unique_dirs(candidates: Iterable[str | None]) -> list[str]:
  """Candidate directories in order, without empty entries or duplicates.

  Args:
    candidates: Directories in search order; `None` and `""` are skipped,
      and a directory equal (after `os.path.abspath`) to an earlier one is
      dropped. `~` is not expanded: callers expand it at call time.

  Returns:
    The remaining directories, as given.
  """
  out: list[str] = []
  seen: set[str] = set()
  for d in candidates:
    if d and os.path.abspath(d) not in seen:
      seen.add(os.path.abspath(d))
      out.append(d)
  return out


def find_file(directory: str, name: str) -> str | None:
  """Path of `name.gz` or `name` in `directory` (gzip preferred).

  Args:
    directory: Directory to look in; it need not exist.
    name: File name without the `.gz` suffix.

  Returns:
    The path of the first regular file found, or `None`.
  """
  for candidate in (name + ".gz", name):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  return None
