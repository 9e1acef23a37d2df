"""Finding and loading the experiments: `studies/<name>/experiment.py`."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

from studies.runner import Experiment

HERE = pathlib.Path(__file__).resolve().parent
# The order RESULTS.md presents them in; others follow alphabetically.
ORDER = ("arcface_notebook", "center_loss", "long_tail", "transfer",
         "cfal_diagnosis", "histology")


def names() -> list[str]:
  found = sorted(p.parent.name for p in HERE.glob("*/experiment.py"))
  return [n for n in ORDER if n in found] + [n for n in found
                                             if n not in ORDER]


def module(name: str) -> types.ModuleType:
  """The experiment's module: its `EXPERIMENT` and its `section`."""
  path = HERE / name / "experiment.py"
  spec = importlib.util.spec_from_file_location(f"studies.{name}", path)
  loaded = importlib.util.module_from_spec(spec)
  # Registered before it runs, as an import would (dataclasses look their
  # module up there); each call loads the file afresh.
  sys.modules[spec.name] = loaded
  spec.loader.exec_module(loaded)
  return loaded


def load(name: str) -> Experiment:
  return module(name).EXPERIMENT
