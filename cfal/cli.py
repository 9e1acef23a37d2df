"""What the commands (cfal-train, cfal-eval; train.py, eval.py) share at the
edge: how they start, the environment TensorFlow starts in, errors as one
line, and the commands they suggest next."""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import shlex
import shutil
import sys
import tempfile
from typing import Callable

from absl import logging


# Lines TensorFlow's native libraries print at load time whatever
# TF_CPP_MIN_LOG_LEVEL says. Only these are dropped; any other line (a CUDA
# or driver error, a missing library) still reaches the terminal.
_NOISE = re.compile("|".join((
    r"oneDNN custom operations are on",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called "
    r"are written to STDERR$",
)))


# absl's help flags, with one or two dashes (absl takes both).
_HELP = ("?", "help", "helpshort", "helpfull", "helpxml")


def program_name(argv: list[str] | None = None) -> str:
  """How the user called the program ("cfal-train", "train.py"), from
  `argv[0]` (default `sys.argv`), for the prefix of its messages."""
  argv = sys.argv if argv is None else argv
  return os.path.basename(argv[0]) if argv and argv[0] else "cfal"


def start(main: Callable[[list[str]], int], flag_values, error_type: type,
          doc: str) -> None:
  """Parses the flags and runs `main`, exiting with its code.

  absl prints the `__main__` module's docstring for --help; under a
  console command that module is pip's stub, so the command's own
  docstring is put there first.
  """
  from absl import app  # pylint: disable=import-outside-toplevel
  sys.modules["__main__"].__doc__ = doc
  # --help lists the flags of the program the user ran (absl keys them by
  # sys.argv[0]); here they were defined by the command's module.
  for flag in flag_values.get_key_flags_for_module(main.__module__):
    flag_values.register_key_flag_for_module(sys.argv[0], flag)
  app.run(lambda argv: sys.exit(main(argv)),
          flags_parser=flags_parser(program_name(), flag_values, error_type))


def command(name: str) -> str:
  """How to call the installed program `name` from here.

  Its bare name when the shell finds this environment's copy; otherwise
  the path of the copy next to this Python (a virtual environment that is
  not activated: `.venv/bin/tensorboard`), relative when it is below the
  working directory.
  """
  beside = pathlib.Path(sys.executable).parent / name
  found = shutil.which(name)
  if not beside.exists() or (found and _same_path(found, beside)):
    return name
  return shlex.quote(_shown(beside))


def done_lines(argv0: str, logdir: os.PathLike,
               export_path: os.PathLike | None, *,
               has_test_split: bool = True) -> list[str]:
  """What a finished training run prints: where things are, and the two
  commands to run next, spelled so that they work from here.

  Args:
    argv0: how training was called (`sys.argv[0]`): a script ("train.py",
      any path to it) is followed by its sibling eval.py, run by this
      Python; the console command by `cfal-eval`.
    logdir, export_path: what the run wrote.
    has_test_split: whether the data has a test split (an image folder
      has none: its evaluation is of the validation split).
  """
  if argv0.endswith(".py"):
    script = pathlib.Path(argv0).with_name("eval.py")
    evaluate = f"{_python()} {shlex.quote(_shown(script))}"
  else:
    evaluate = command("cfal-eval")
  split = "test" if has_test_split else "validation"
  where = shlex.quote(str(logdir))
  lines = [f"Done. Checkpoints in {pathlib.Path(logdir) / 'checkpoints'}"
           + (f", SavedModel in {export_path}" if export_path else "") + "."]
  lines.append(f"Evaluate on the {split} split: {evaluate} --logdir={where}"
               + ("" if has_test_split else " --split=validation"))
  lines.append(f"Watch it in TensorBoard: {command('tensorboard')} "
               f"--logdir={where} --host=127.0.0.1")
  return lines


def _python() -> str:
  """This Python as the user would type it: `python` when that is what the
  shell finds, else its path (relative below the working directory)."""
  for name in ("python", "python3"):
    found = shutil.which(name)
    if found and _same_path(found, sys.executable):
      return name
  return shlex.quote(_shown(sys.executable))


def _shown(path: os.PathLike) -> str:
  """`path` as a command line shows it: relative when below the working
  directory, else as given. Links are not resolved: a virtual
  environment's bin/python is a link whose own path brings the
  environment."""
  path = pathlib.Path(path)
  if path.is_absolute():
    try:
      return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
      pass
  return str(path)


def _same_path(a: os.PathLike, b: os.PathLike) -> bool:
  # Symbolic links are not followed: a virtual environment's python links
  # to the system's, but only the link's path brings the environment.
  return os.path.abspath(a) == os.path.abspath(b)


def flags_parser(program: str, flag_values, error_type: type):
  """An absl `flags_parser` whose errors are one line and exit 2.

  absl prints two lines and exits 1 for an unknown flag, a bad enum value
  or a missing flagfile; a usage error here is one line, exit 2, like
  every other.

  Args:
    program: "train.py" or "eval.py", the line's prefix.
    flag_values: the script's FLAGS object.
    error_type: absl's flag `Error` class (passed in: the library defines and
      reads no flags itself).
  """
  def parse(argv: list[str]) -> list[str]:
    try:
      return flag_values(argv)
    except SystemExit as done:
      # absl exits 1 after printing --help; asking for help succeeded.
      if done.code == 1 and any(arg.split("=")[0].lstrip("-") in _HELP
                                for arg in argv[1:]):
        sys.exit(0)
      raise
    except error_type as error:
      message = " ".join(str(error).split()).removeprefix("ERROR:: ")
      print(f"{program}: {message} (see --help)", file=sys.stderr)
      sys.exit(2)
  return parse


def prepare_environment() -> None:
  """What the scripts set before TensorFlow loads.

  oneDNN CPU kernels: TensorFlow leaves them off on CPUs it was not tuned
  for (this AMD Zen 3 among them); with them on, a seed-CNN train step ran
  1.5x to 3x faster here (bench/loop.py, BENCHMARKS.md). Only the entry
  points (train.py, eval.py, bench/) turn them on: importing the library
  never changes the environment. Library users who want the same set
  `TF_ENABLE_ONEDNN_OPTS=1` before importing TensorFlow; anyone can opt out
  with `TF_ENABLE_ONEDNN_OPTS=0`.
  """
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(program: str, argv: list[str], body: Callable[[], None], *,
        verbose: bool, check: Callable[[], None] | None = None) -> int:
  """Runs `check`, then `body`; each error becomes one line and an exit code.

  `check` runs before TensorFlow is imported (flag checks that need only
  the declarations), so a usage error appears at once. Usage errors exit
  2; data errors and stopped runs (`TrainingError`) 1; a run stopped by
  SIGTERM/SIGINT after saving a checkpoint 128 + the signal.

  Stray positional arguments are a usage error. TensorFlow's known
  start-up banners and absl INFO logs are filtered so the terminal keeps
  the progress lines. With `verbose`, errors propagate with their
  traceback instead.
  """
  if len(argv) > 1:
    print(f"{program}: unexpected arguments {' '.join(argv[1:])}; flags are "
          f"--name=value.", file=sys.stderr)
    return 2
  from cfal.errors import UsageError  # pylint: disable=import-outside-toplevel
  if check is not None:
    try:
      check()
    except UsageError as error:
      if verbose:
        raise
      print(f"{program}: {error}", file=sys.stderr)
      return 2
  prepare_environment()
  logging.set_verbosity(logging.WARNING)
  if not verbose:
    import_filtered("tensorflow")
  from cfal.data.errors import DataError  # pylint: disable=import-outside-toplevel
  from cfal.errors import (  # pylint: disable=import-outside-toplevel
      Interrupted, TrainingError)
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


def import_filtered(module: str) -> None:
  """Imports `module` with its native start-up noise filtered out of stderr.

  The C++ libraries log banners at load time ("oneDNN custom operations
  are on", CPU feature notes) that ignore TF_CPP_MIN_LOG_LEVEL and would
  bury a one-line error. File descriptor 2 goes to a temporary file during
  the import; afterwards every line that is not known noise is written to
  the real stderr, so an error (a CUDA or driver failure) is never lost.
  Python-level failures raise as usual.
  """
  if module in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    try:
      os.dup2(captured.fileno(), 2)
      importlib.import_module(module)
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", "replace").splitlines():
        if line.strip() and not _NOISE.search(line):
          print(line, file=sys.stderr)
