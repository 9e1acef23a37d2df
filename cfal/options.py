"""Declared options of cfal's components, checked without TensorFlow.

Every head and backbone declares its hyper-parameters once, as `Option`s in
a `Spec` (`cfal/heads/registry.py`, `cfal/backbones/registry.py`). The
declaration is the one place that knows an option's name, type, range and
help: the component's constructor checks its arguments through it, and
train.py derives its flags and its usage errors from it. This module and
the registries import no TensorFlow, so a bad value is reported in well
under a second, before TensorFlow loads; the component class itself is
imported only when it is built (`Spec.load`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, Mapping

_TYPES = ("float", "int", "bool", "str", "floats", "ints")


@dataclasses.dataclass(frozen=True)
class Option:
  """One hyper-parameter: its name, type, valid values and help.

  Attributes:
    name: the keyword the component's constructor takes (and train.py's
      flag name).
    type: "float", "int", "bool", "str", "floats" or "ints" (the last two
      are lists, written `1,2,3` on the command line).
    help: one line for `--help` and the README.
    low, high: bounds of a number (each element of a list); None is
      unbounded.
    low_open, high_open: whether the bound itself is excluded.
    choices: the valid values of a "str" option.
    message: optional text replacing the generic "`name` (value) must be
      in [low, high]." when a number is out of range; `{value}` in it is
      replaced by the value as given (e.g. "ArcFace `margin` ({value}) is an
      angle in radians and must be in [0, pi); 0.5 is the paper's value.").
  """

  name: str
  type: str
  help: str
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  choices: tuple[str, ...] | None = None
  message: str | None = None

  def __post_init__(self):
    if self.type not in _TYPES:
      raise ValueError(f"Option {self.name!r}: type {self.type!r} is not one "
                       f"of {', '.join(_TYPES)}.")

  def range_text(self) -> str:
    """"(0, inf)", "[0, 3.14159)", "one of alpha, gradient", or ""."""
    if self.choices:
      return "one of " + ", ".join(self.choices)
    if self.low is None and self.high is None:
      return ""
    lo = "-inf" if self.low is None else f"{self.low:g}"
    hi = "inf" if self.high is None else f"{self.high:g}"
    return (f"{'(' if self.low_open else '['}{lo}, "
            f"{hi}{')' if self.high_open else ']'}")

  def check(self, value: Any) -> Any:
    """`value` converted to the option's type, or a one-line ValueError.

    Raises:
      ValueError: "`margin` (4) must be in [0, 3.14159)." and the like.
    """
    if self.type in ("floats", "ints"):
      if isinstance(value, str):
        value = self.parse(value)
      try:
        items = list(value)
      except TypeError:
        raise ValueError(f"`{self.name}` must be a list of numbers, got "
                         f"{value!r}.") from None
      if not items:
        raise ValueError(f"`{self.name}` must not be empty.")
      scalar = dataclasses.replace(self, type=self.type[:-1])
      return [scalar.check(v) for v in items]
    if self.type == "bool":
      if isinstance(value, str):
        value = self.parse(value)
      if not isinstance(value, bool) and value not in (0, 1):
        raise ValueError(f"`{self.name}` must be true or false, got "
                         f"{value!r}.")
      return bool(value)
    if self.type == "str":
      if not isinstance(value, str):
        raise ValueError(f"`{self.name}` must be a string, got {value!r}.")
      if self.choices and value not in self.choices:
        raise ValueError(f"`{self.name}` ({value!r}) must be one of "
                         f"{', '.join(self.choices)}.")
      return value
    return self._check_number(value)

  def _check_number(self, value: Any) -> float | int:
    if isinstance(value, str):
      value = self.parse(value)
    if isinstance(value, bool):
      raise ValueError(f"`{self.name}` must be a number, got {value!r}.")
    try:
      number = float(value)
    except (TypeError, ValueError):
      raise ValueError(f"`{self.name}` must be a number, got "
                       f"{value!r}.") from None
    if self.type == "int":
      if not math.isfinite(number) or number != int(number):
        raise ValueError(f"`{self.name}` must be an integer, got {value!r}.")
      number = int(number)
    ok = math.isfinite(number)
    if ok and self.low is not None:
      ok = number > self.low if self.low_open else number >= self.low
    if ok and self.high is not None:
      ok = number < self.high if self.high_open else number <= self.high
    if not ok:
      shown = f"{number:g}" if math.isfinite(number) else str(value)
      if self.message is not None:
        raise ValueError(self.message.replace("{value}", shown))
      raise ValueError(f"`{self.name}` ({shown}) must be in "
                       f"{self.range_text()}.")
    return number

  def parse(self, text: str) -> Any:
    """A command-line string -> a value of the option's type (unchecked)."""
    text = text.strip()
    try:
      if self.type in ("floats", "ints"):
        scalar = dataclasses.replace(self, type=self.type[:-1])
        return [scalar.parse(t) for t in text.split(",") if t.strip()]
      if self.type == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
          return True
        if lowered in ("0", "false", "no", "off"):
          return False
        raise ValueError
      if self.type == "int":
        return int(text)
      if self.type == "float":
        return float(text)
    except ValueError:
      kind = {"floats": "a list of numbers", "ints": "a list of integers",
              "bool": "true or false", "int": "an integer",
              "float": "a number"}[self.type]
      raise ValueError(f"`{self.name}` must be {kind}, got {text!r}."
                       ) from None
    return text


@dataclasses.dataclass(frozen=True)
class Spec:
  """A registered component: where its class lives and what it takes.

  Attributes:
    name: the registry name (`--head=<name>`, `--backbone=<name>`).
    target: "module:attribute" of the class or builder function, imported
      only by `load` (so reading a spec never imports TensorFlow).
    options: the hyper-parameters it declares.
    summary: one line for `--help` and error messages.
  """

  name: str
  target: str
  options: tuple[Option, ...]
  summary: str = ""

  def option(self, name: str) -> Option | None:
    for option in self.options:
      if option.name == name:
        return option
    return None

  @property
  def option_names(self) -> tuple[str, ...]:
    return tuple(o.name for o in self.options)

  def check(self, values: Mapping[str, Any], *, kind: str) -> dict[str, Any]:
    """Every value checked against its declaration; unknown names refused.

    Args:
      values: option name -> value (strings are parsed).
      kind: "head" or "backbone", for the message.

    Raises:
      ValueError: one line naming the component, the option and what is
        wrong, e.g. "--head=arcface takes no sigma; it takes scale, margin,
        ...".
    """
    checked = {}
    for key, value in values.items():
      option = self.option(key)
      if option is None:
        takes = ", ".join(self.option_names) or "no options"
        raise ValueError(f"--{kind}={self.name} takes no {key}; it takes "
                         f"{takes}.")
      try:
        checked[key] = option.check(value)
      except ValueError as error:
        raise ValueError(f"--{kind}={self.name}: {error}") from None
    return checked

  def load(self) -> Any:
    """Imports and returns the class or builder function."""
    module, _, attribute = self.target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def parse_assignments(text: str, spec: Spec, *, kind: str) -> dict[str, Any]:
  """`"width=32,depth_per_stage=1;1;1"` -> checked values, for `spec`.

  Items are separated by commas; a list value separates its elements with
  `;` (so `a=1;2,b=3` is a=[1, 2] and b=3). Nothing is evaluated.

  Raises:
    ValueError: one line, for a malformed item, an unknown name or a bad
      value.
  """
  values: dict[str, Any] = {}
  for item in (part.strip() for part in text.split(",")):
    if not item:
      continue
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ValueError(f"--{kind}_args item {item!r} is not name=value.")
    option = spec.option(key)
    if option is not None and option.type in ("floats", "ints"):
      raw = raw.replace(";", ",")
    values[key] = raw.strip()
  return spec.check(values, kind=kind)
