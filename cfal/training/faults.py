"""Why a step stopped being finite, in words a user can act on.

The compiled step checks, in order, the images, the embeddings, the loss
and the gradients (`cfal.training.steps.FAULTS`); the first non-finite one
points at the cause: the data, the backbone (usually the learning rate
after it has moved the weights), or the head's hyper-parameters.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cfal.training.config import TrainConfig
from cfal.training.steps import FAULTS

# The hyper-parameters that can push each head's loss out of float range.
_HEAD_KNOBS = {
    "affinity": ("sigma",), "cfal": ("sigma", "margin"),
    "arcface": ("margin", "scale"), "cosface": ("margin", "scale"),
    "subcenter_arcface": ("margin", "scale"),
    "sphereface": ("margin", "scale"),
    "combined_margin": ("m1", "m2", "m3", "scale"),
    "center_loss": ("center_weight", "alpha"), "focal": ("gamma",),
}


def likely_cause(code: int, step: int, config: TrainConfig) -> str:
  """A short phrase naming what most likely made step `step` non-finite."""
  head = config.model.head
  lr = config.optimizer.learning_rate
  knobs = _HEAD_KNOBS.get(head, ())
  values = ", ".join(f"{k}={config.model.head_args[k]}" for k in knobs
                     if k in config.model.head_args)
  head_hint = f"the {head} head's {'/'.join(knobs) or 'settings'}" + (
      f" ({values})" if values else "")
  if code == 1:
    return "the input batch holds NaN or Inf pixels: check the data"
  if code == 2:
    if step <= 1:
      return ("the backbone's output overflowed before any update: check "
              "the input scale and --mixed_precision")
    return (f"the backbone's weights diverged: --learning_rate={lr:g} is "
            f"likely too high (try {lr / 10:g}) or add --warmup_steps")
  if code == 3:
    return (f"{head_hint} out of range for these embeddings, or "
            f"--learning_rate={lr:g} too high")
  return (f"the gradient overflowed although the loss is finite: "
          f"--learning_rate={lr:g} too high or {head_hint}")


def nonfinite_message(code: int, step: int, config: TrainConfig,
                      last_checkpoint: str | None) -> str:
  """The one line a run stops with when a step is not finite."""
  what = FAULTS.get(code, "values")
  kept = (f"the last checkpoint, {last_checkpoint}, is intact"
          if last_checkpoint else "no checkpoint was written yet")
  return (f"step {step}: non-finite {what} (likely cause: "
          f"{likely_cause(code, step, config)}); the step was not applied and "
          f"{kept}. Fix the cause and rerun to resume, or pass "
          f"--skip_nonfinite_steps=N to skip up to N such steps.")


def nonfinite_variables(variables) -> list[str]:
  """Names of the floating-point variables holding NaN or Inf."""
  bad = []
  for variable in variables:   # tf.Variables and Keras 3 variables
    value = tf.convert_to_tensor(variable)
    if not value.dtype.is_floating:
      continue
    if not np.all(np.isfinite(tf.cast(value, tf.float32).numpy())):
      bad.append(variable.path if hasattr(variable, "path")
                 else variable.name)
  return bad
