"""Helpers the backbones share: per-layer seeds and argument checks."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np


class Seeds:
  """A stream of distinct, reproducible per-layer seeds from one base seed.

  Keras initializers seeded with an int return the same values on every
  call, so each layer needs its own seed. `next()` derives the k-th one from
  `(seed, k)` with NumPy's `SeedSequence`: the same base seed and build order
  give the same weights, and no global random state is read or advanced.
  With `seed=None` every `next()` is `None`, and Keras draws the seeds from
  Python's global `random` module (what `keras.utils.set_random_seed` seeds).

  Args:
    seed: base seed, any int (negative ones are taken modulo 2**64), or None.
  """

  def __init__(self, seed: int | None):
    if seed is not None and (isinstance(seed, bool)
                             or not isinstance(seed, (int, np.integer))):
      raise ValueError(f"seed must be an int or None, got {seed!r}")
    self._seed = None if seed is None else int(seed) % 2**64
    self._count = 0

  def next(self) -> int | None:
    """The next layer's seed: an int in [0, 2**31), or None if unseeded."""
    if self._seed is None:
      return None
    self._count += 1
    state = np.random.SeedSequence([self._seed, self._count]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)

  def he_normal(self) -> keras.initializers.Initializer:
    """He-normal initializer (fan-in) for convolutions before a ReLU."""
    return keras.initializers.HeNormal(seed=self.next())

  def glorot_uniform(self) -> keras.initializers.Initializer:
    """Glorot-uniform initializer, the Keras default for Dense layers."""
    return keras.initializers.GlorotUniform(seed=self.next())

  def truncated_normal(self, stddev: float) -> keras.initializers.Initializer:
    """Truncated-normal initializer with the given standard deviation."""
    return keras.initializers.TruncatedNormal(stddev=stddev, seed=self.next())


def check_positive_int(name: str, value, minimum: int = 1) -> int:
  """`value` as an int, or a one-line ValueError if it is not an int >= min.

  Args:
    name: argument name for the message.
    value: the value to check.
    minimum: smallest allowed value.
  """
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


def check_input_shape(backbone: str, input_shape: Sequence[int],
                      min_size: int) -> tuple[int, int, int]:
  """`input_shape` as `(H, W, C)`, or a one-line ValueError.

  Args:
    backbone: backbone name for the message.
    input_shape: `(height, width, channels)` of one image.
    min_size: smallest height and width the backbone can take.
  """
  try:
    shape = tuple(input_shape)
  except TypeError:
    shape = None
  if (shape is None or len(shape) != 3
      or any(isinstance(d, bool) or not isinstance(d, (int, np.integer))
             or d < 1 for d in shape)):
    raise ValueError(f"{backbone}: input_shape must be (height, width, "
                     f"channels) of positive ints, got {input_shape!r}")
  height, width, channels = (int(d) for d in shape)
  if min(height, width) < min_size:
    raise ValueError(f"{backbone} needs images of at least {min_size}x"
                     f"{min_size} pixels, got input_shape={shape!r}")
  return height, width, channels


def check_rate(name: str, value: float) -> float:
  """`value` as a float in [0, 1), or a one-line ValueError.

  Args:
    name: argument name for the message.
    value: the rate to check.
  """
  try:
    rate = float(value)
  except (TypeError, ValueError):
    rate = float("nan")
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value!r}")
  return rate
