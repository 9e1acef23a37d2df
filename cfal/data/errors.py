"""Exceptions raised by :mod:`cfal.data`."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
  """A data file is missing, malformed, or could not be fetched.

  The message is always a single line that names the file (or URL) involved
  and says what is wrong, so it can be shown to a user as-is.
  """
