"""What train.py and eval.py share at the edge: errors become one line."""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import logging


def run(program: str, argv: list[str], body: Callable[[], None], *,
        verbose: bool) -> int:
  """Runs `body`; each error becomes one line and an exit code.

  Usage errors exit 2; data errors and stopped runs (`TrainingError`) 1; a
  run stopped by SIGTERM/SIGINT after saving a checkpoint 128 + the signal.

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
  if not verbose:
    _import_tensorflow_quietly()
  from cfal.data.errors import DataError  # pylint: disable=import-outside-toplevel
  from cfal.errors import (  # pylint: disable=import-outside-toplevel
      Interrupted, TrainingError, UsageError)
  try:
    body()
  except Interrupted as error:
    print(f"{program}: {error}", file=sys.stderr)
    return 128 + error.signum
  except (UsageError, DataError, TrainingError) as error:
    if verbose:
      raise
    print(f"{program}: {error}", file=sys.stderr)
    return 2 if isinstance(error, UsageError) else 1
  return 0


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow with the C++ stderr of its start-up silenced.

  Its native libraries log banners at load time ("oneDNN custom operations
  are on", CPU feature notes) that ignore TF_CPP_MIN_LOG_LEVEL and would
  bury a one-line error. Python-level failures still raise normally;
  `--verbose` imports without this.
  """
  if "tensorflow" in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
