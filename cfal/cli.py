"""What train.py and eval.py share at the edge: errors become one line."""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import logging


def run(program: str, argv: list[str], body: Callable[[], None], *,
        verbose: bool) -> int:
  """Runs `body`; usage errors exit 2 and data errors 1, each one line.

  Stray positional arguments are a usage error. TensorFlow's C++ and absl
  INFO logs are quietened so the terminal keeps the progress lines. With
  `verbose`, errors propagate with their traceback instead.
  """
  if len(argv) > 1:
    print(f"{program}: unexpected arguments {' '.join(argv[1:])}; flags are "
          f"--name=value.", file=sys.stderr)
    return 2
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.set_verbosity(logging.WARNING)
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
