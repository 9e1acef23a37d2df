"""Errors the scripts turn into one line on stderr, and their exit codes.

`UsageError` exits 2 (a bad flag, combination or run directory),
`cfal.data.DataError` exits 1 (bad or missing data), `TrainingError` exits 1
(the run cannot go on: numbers stopped being finite, a checkpoint could not
be written), and `Interrupted` exits 128 + the signal number after the run
saved a checkpoint (the shell's convention for "killed by signal N").
"""


class UsageError(ValueError):
  """A flag, a combination of flags or a run directory that cannot work."""


class TrainingError(RuntimeError):
  """The run stopped; the message says why and what was kept."""


class Interrupted(Exception):
  """SIGTERM or SIGINT arrived; the run saved a checkpoint and stopped."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
