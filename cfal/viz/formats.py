"""The file formats figures are written in, checkable before anything heavy.

This module imports neither TensorFlow nor matplotlib, so a command line
can check a `--figure_format` flag against `FIGURE_FORMATS` (or with
`figure_formats`) before it starts TensorFlow.
"""

from __future__ import annotations

from typing import Iterable

# Every format `cfal.report.documents.write_outputs` can write: PNG
# (raster), PDF and SVG (vector text and axes, rasterised scatter points).
FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
  """Checks figure formats; duplicates dropped, order kept.

  Args:
    formats: format names, as a sequence ("png", "pdf") or one
      comma-separated string ("png,pdf"); case and spaces are ignored.

  Returns:
    The formats, lower-case, each once, e.g. `("png", "pdf")`.

  Raises:
    ValueError: (one line) a name is not in `FIGURE_FORMATS`, or none is
      given.
  """
  if isinstance(formats, str):
    formats = formats.split(",")
  names = [str(name).strip().lower() for name in formats]
  names = [name for name in names if name]
  valid = ", ".join(FIGURE_FORMATS)
  unknown = [name for name in names if name not in FIGURE_FORMATS]
  if unknown:
    raise ValueError(f"Unknown figure format {', '.join(map(repr, unknown))}"
                     f"; valid formats are {valid}.")
  if not names:
    raise ValueError(f"No figure format given; valid formats are {valid}.")
  return tuple(dict.fromkeys(names))
