"""What train.py and eval.py share at the edge: errors become one line."""

from __future__ import annotations

import sys
from typing import Callable


def run(program: str, body: Callable[[], None], *, verbose: bool) -> int:
  """Runs `body`; usage errors exit 2 and data errors 1, each one line.

  With `verbose`, errors propagate with their traceback instead.
  """
  from cfal.data.errors import DataError  # pylint: disable=import-outside-toplevel
  from cfal.errors import UsageError  # pylint: disable=import-outside-toplevel
  try:
    body()
  except (UsageError, DataError) as error:
    if verbose:
      raise
    print(f"{program}: {error}", file=sys.stderr)
    return 2 if isinstance(error, UsageError) else 1
  return 0
