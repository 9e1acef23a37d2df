"""Errors that mean "the user asked for something that cannot work".

The scripts turn them into one line on stderr: `UsageError` exits 2 (a bad
flag or combination), `cfal.data.DataError` exits 1 (bad or missing data).
"""


class UsageError(ValueError):
  """A flag, a combination of flags or a run directory that cannot work."""
