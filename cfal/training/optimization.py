"""Parameter groups: which optimizer updates which variables, from which step.

A run's trainable variables fall in three parts:

  * body: the backbone up to its projection (the pretrained network when
    fine-tuning);
  * projection: the backbone's last layer, the Dense layer named
    "embedding" that every cfal backbone ends with;
  * head: the head's variables (prototypes, class weights of a margin).

Each part has a learning rate (the head's is `head_learning_rate` when
given, else `learning_rate`) and a first step (the body's is
`freeze_backbone_steps`, the others' 0). Parts with the same rate and first
step share one Keras optimizer, so a plain run has exactly one, as before.

An optimizer counts only the steps it applied (`iterations`), so a group
that joins at step N gets a schedule read at `iterations + N` (the run's
cosine decay stays on the run's clock), and Adam's bias correction starts
from the group's own first update: the moments of a body that joins late
are not mistaken for ones averaged over N steps.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
import tensorflow as tf

# The name of the projection layer every cfal backbone ends with.
PROJECTION_LAYER = "embedding"


@dataclasses.dataclass
class Group:
  """One optimizer and what it updates.

  Attributes:
    name: "all" for a run with one group, else the parts it holds joined
      by "+" ("body", "projection+head").
    optimizer: a built Keras optimizer.
    variables: the variables it updates.
    first_step: the step from which it is applied.
  """

  name: str
  optimizer: keras.optimizers.Optimizer
  variables: list[tf.Variable]
  first_step: int = 0


class Optimization:
  """A run's optimizers, one per parameter group.

  Args:
    groups: the groups, in a fixed order (the order gradients come in).
  """

  def __init__(self, groups: Sequence[Group]):
    self.groups = list(groups)

  @classmethod
  def single(cls, optimizer: keras.optimizers.Optimizer,
             variables: Sequence[tf.Variable]) -> "Optimization":
    """One optimizer for every variable, from the first step."""
    return cls([Group("all", optimizer, list(variables))])

  @property
  def checkpoint_parts(self) -> dict[str, keras.optimizers.Optimizer]:
    """The optimizers by checkpoint key: "optimizer" when there is one
    (what runs have always saved), else "optimizer_<group>"."""
    if len(self.groups) == 1:
      return {"optimizer": self.groups[0].optimizer}
    return {f"optimizer_{g.name.replace('+', '_')}": g.optimizer
            for g in self.groups}

  @property
  def variables(self) -> list[tf.Variable]:
    """Every optimizer variable (slots, iteration counts)."""
    return [v for g in self.groups for v in g.optimizer.variables]

  def build(self) -> None:
    """Creates every slot now (inside the strategy scope, before any
    compiled call): a group that joins later has its slots from the
    start, so checkpoints always hold the same variables."""
    for group in self.groups:
      group.optimizer.build(group.variables)

  def active(self, step: int) -> list[Group]:
    """The groups applied at `step`."""
    return [g for g in self.groups if step >= g.first_step]

  def boundaries(self) -> list[int]:
    """The steps at which a group joins (compiled calls end there, so a
    call never straddles a change of what is trained)."""
    return sorted({g.first_step for g in self.groups if g.first_step > 0})

  def learning_rates(self) -> dict[str, float]:
    """Each group's current learning rate, for the train summaries:
    "learning_rate", plus "learning_rate/<group>" for the others."""
    rates = {}
    for i, group in enumerate(self.groups):
      key = "learning_rate" if i == 0 else f"learning_rate/{group.name}"
      rates[key] = float(group.optimizer.learning_rate)
    return rates

  @property
  def scales_loss(self) -> bool:
    return any(isinstance(g.optimizer, keras.optimizers.LossScaleOptimizer)
               for g in self.groups)

  def scale_loss(self, loss: tf.Tensor) -> tf.Tensor:
    """The loss as float16 loss scaling wants it (one group only)."""
    return self.groups[0].optimizer.scale_loss(loss)

  def apply(self, groups: Sequence[Group], grads: Sequence[tf.Tensor]
            ) -> None:
    """Applies `grads`, given in the order of `groups`' variables."""
    offset = 0
    for group in groups:
      n = len(group.variables)
      group.optimizer.apply_gradients(
          zip(grads[offset:offset + n], group.variables))
      offset += n


def parameter_parts(backbone: keras.Model, head: tf.Module
                    ) -> dict[str, list[tf.Variable]]:
  """The trainable variables as body, projection and head.

  A backbone without an "embedding" layer (a bare feature extractor) has
  no projection part.
  """
  try:
    projection = list(backbone.get_layer(PROJECTION_LAYER).trainable_variables)
  except ValueError:
    projection = []
  ids = {id(v) for v in projection}
  body = [v for v in backbone.trainable_variables if id(v) not in ids]
  return {"body": body, "projection": projection,
          "head": list(head.trainable_variables)}


def make_groups(parts: dict[str, list[tf.Variable]], *,
                learning_rate: float, head_learning_rate: float | None,
                freeze_backbone_steps: int,
                optimizer_for: Callable[[float, int],
                                        keras.optimizers.Optimizer]
                ) -> Optimization:
  """Merges the parts into groups by (learning rate, first step).

  Args:
    parts: `parameter_parts`' result.
    learning_rate: the body's and projection's peak rate.
    head_learning_rate: the head's peak rate (None: `learning_rate`).
    freeze_backbone_steps: the body's first step.
    optimizer_for: `(peak rate, first step) -> a new optimizer`.
  """
  head_rate = learning_rate if head_learning_rate is None else (
      head_learning_rate)
  settings = {"body": (learning_rate, freeze_backbone_steps),
              "projection": (learning_rate, 0),
              "head": (head_rate, 0)}
  merged: dict[tuple[float, int], list[str]] = {}
  for part, key in settings.items():
    if parts[part] or part == "head":
      merged.setdefault(key, []).append(part)
  groups = []
  for (rate, first), names in merged.items():
    variables = [v for name in names for v in parts[name]]
    name = "all" if len(merged) == 1 else "+".join(names)
    groups.append(Group(name, optimizer_for(rate, first), variables, first))
  return Optimization(groups)


class OffsetSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """`schedule(step + offset)`: a group that joins at step `offset` reads
  the run's schedule on the run's clock."""

  def __init__(self, schedule, offset: int):
    self.schedule = schedule
    self.offset = int(offset)

  def __call__(self, step):
    return self.schedule(tf.cast(step, tf.int64) + self.offset)

  def get_config(self):
    return {"offset": self.offset}
