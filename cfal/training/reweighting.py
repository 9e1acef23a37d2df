"""Deferred re-weighting (DRW): class-balanced loss weights from a given step.

Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware
Margin Loss", NeurIPS 2019, section 3.3 and Algorithm 1: train on the
plain loss first, so the representation is learnt from every example as
it comes, then re-weight each example's loss by its class's weight. Their
weights (section 4) are the effective-number weights of Cui et al. 2019,
`w_c = (1 - beta) / (1 - beta^n_c)` with beta = 0.9999, normalised so that
`sum_c w_c = C`; LDAM-DRW is the LDAM head with this schedule, and any
head can use it.

Before `first_step` a step's loss is the head's own; from it on it is

  (1 / B) sum_i w_{y_i} loss_i

with B the global batch size (`tf.nn.compute_average_loss`, as before the
switch). The authors' public implementation passes the weights to
PyTorch's `cross_entropy(weight=...)`, whose mean divides by the batch's
sum of weights `sum_i w_{y_i}` instead. That normalisation is not used
here: it makes every batch's scale depend on its class mix, and under a
distribution strategy it needs a cross-replica sum of the weights before
the loss; dividing by B keeps the loss the batch mean of the weighted
per-example losses on both sides of the switch. The two differ by the
factor `B / sum_i w_{y_i}` per batch: with weights summing to C, a
long-tailed batch (mostly frequent classes, small weights) has
`sum_i w_{y_i} < B`, so the loss here is the smaller of the two. Adam
(the default optimizer) is unaffected by a constant factor; with SGD it
acts as a lower learning rate after the switch.

Where the switch happens depends only on the step counter (which every
checkpoint holds): the compiled loop for a step is chosen by whether the
step is re-weighted (`Steps.loop_for`), and no compiled call crosses
`first_step` (`Steps.boundaries`), so a run resumed on either side of it
is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from cfal.errors import UsageError
from cfal.heads import Head
from cfal.heads.parts import ClassWeights
from cfal.training.config import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class DeferredReweighting:
  """Class weights that multiply each example's loss from `first_step` on.

  Attributes:
    first_step: the first step whose loss is re-weighted (>= 0).
    weights: the per-class weights (`ClassWeights.effective_number`).
    beta: the effective-number beta they were made with.
  """

  first_step: int
  weights: ClassWeights
  beta: float

  def active(self, step: int) -> bool:
    """Whether the loss of `step` is re-weighted."""
    return step >= self.first_step

  def describe(self) -> str:
    return f"deferred re-weighting on (effective number, beta={self.beta:g})"


def first_step(opt: OptimizerConfig, per_epoch: int) -> int | None:
  """The step at which re-weighting starts, or None if it never does.

  `reweight_from_epoch` becomes a step as `RunConfig.epochs` does
  (`ceil(epochs * steps per epoch)`), so `reweight_from_epoch == epochs`
  is the run's last step + 1.
  """
  if opt.reweight_from_step is not None:
    return int(opt.reweight_from_step)
  if opt.reweight_from_epoch is not None:
    return math.ceil(opt.reweight_from_epoch * per_epoch)
  return None


def _flag(opt: OptimizerConfig) -> str:
  if opt.reweight_from_step is not None:
    return f"--reweight_from_step={opt.reweight_from_step}"
  return f"--reweight_from_epoch={opt.reweight_from_epoch:g}"


def make_reweighting(opt: OptimizerConfig, *, class_counts: Sequence[int]
                     | None, head: Head, per_epoch: int, total_steps: int
                     ) -> DeferredReweighting | None:
  """The run's deferred re-weighting (None without it).

  Raises:
    UsageError: one line: both start settings, a start at or after the
      run's end (the switch would never happen), a head that already
      weights its classes (the weights would be applied twice), or no
      class counts.
  """
  if opt.reweight_from_step is not None and opt.reweight_from_epoch is not None:
    raise UsageError(f"--reweight_from_step={opt.reweight_from_step} and "
                     f"--reweight_from_epoch={opt.reweight_from_epoch:g} both "
                     f"say when deferred re-weighting starts: give one.")
  start = first_step(opt, per_epoch)
  if start is None:
    return None
  flag = _flag(opt)
  if start < 0:
    raise UsageError(f"{flag} must be >= 0.")
  if start >= total_steps:
    raise UsageError(f"{flag} starts deferred re-weighting after {start} "
                     f"steps, but the run trains {total_steps} steps "
                     f"({per_epoch} per epoch): it would never switch on; "
                     f"start it earlier or train longer.")
  if head.class_weights is not None:
    raise UsageError(f"{flag}: the {type(head).__name__} head already "
                     f"weights its classes, and deferred re-weighting on top "
                     f"would apply class weights twice: set its "
                     f"class_weighting to none (--class_weighting=none), or "
                     f"drop its class_weights.")
  if class_counts is None:
    raise UsageError(f"{flag} needs the class counts of the training data, "
                     f"which this dataset does not give.")
  try:
    weights = ClassWeights.effective_number(class_counts, opt.reweight_beta,
                                            allow_empty=True)
  except ValueError as error:
    raise UsageError(f"--reweight_beta: {error}") from None
  return DeferredReweighting(first_step=start, weights=weights,
                             beta=float(opt.reweight_beta))
