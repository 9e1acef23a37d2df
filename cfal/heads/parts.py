"""Loss parts any head composes: class weights, focal modulation, regularisers.

A head computes only its core per-example loss and the log-probability of
the target it uses for modulation; `Head.loss` combines them with its parts
in one place:

  loss_i = w_{y_i} * m_i * (core_i + sum_r R_r)

`w` comes from `ClassWeights`, `m_i` from `FocalModulation`, and each
`R_r` is a `Regularizer` (a scalar that depends on the head's variables,
such as `PrototypeSpread`). So a class-balanced ArcFace is

  ArcFace(num_classes=C, embedding_dim=D,
          class_weights=ClassWeights.effective_number(counts, beta=0.999))

and CFAL is Affinity with `FocalModulation(gamma, back_propagate=False)`
and effective-number class weights.

This module imports no other head module, so `base` can import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import tensorflow as tf

from cfal.heads import registry

if TYPE_CHECKING:
  from cfal.heads.base import Head


def class_balanced_weights(class_counts: Sequence[float], beta: float, *,
                           allow_empty: bool = False) -> np.ndarray:
  """Class weights from the effective number of samples (Cui et al. 2019).

  `w_c = (1 - beta) / (1 - beta ** n_c)`, normalised so the weights sum to
  the number of classes (as Cui et al. and Cao et al. 2019 normalise
  them: the mean weight per class is 1). `beta = 0` gives equal weights;
  as `beta -> 1` the weights approach inverse class frequency.

  Empty classes (`allow_empty`): `w_c` of a count 0 is infinite, but such
  a class is never a training target, so its weight multiplies nothing.
  It gets weight 0, and the classes with examples are normalised among
  themselves (their weights sum to their number), so an empty class
  changes no other class's weight. Without empty classes this is the
  formula above.

  Args:
    class_counts: number of training examples of each class, all >= 1
      (>= 0, not all 0, with `allow_empty`).
    beta: in [0, 1).
    allow_empty: accept classes without examples (see above).

  Returns:
    float64 array `[C]`.
  """
  counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
  if counts.size < 2:
    raise ValueError(f"`class_counts` needs one count per class (at least 2), "
                     f"got {counts.size}.")
  if allow_empty:
    if (not np.all(np.isfinite(counts)) or np.any(counts < 0)
        or not counts.any()):
      raise ValueError("`class_counts` must be finite and >= 0 for every "
                       "class, and not all 0.")
  elif not np.all(np.isfinite(counts)) or np.any(counts < 1):
    raise ValueError(f"`class_counts` must be >= 1 for every class, got "
                     f"min {counts.min()}: drop empty classes or pass no "
                     f"counts.")
  beta = registry.BETA.check(beta)
  present = counts > 0
  weights = np.zeros_like(counts)
  # 1 - beta**n computed as -expm1(n*log(beta)) keeps precision when
  # beta is close to 1.
  if beta == 0.0:
    weights[present] = 1.0
  else:
    weights[present] = (1.0 - beta) / -np.expm1(counts[present]
                                                * np.log(beta))
  return weights * (present.sum() / weights.sum())


class ClassWeights:
  """A fixed weight per class, multiplying each example's loss by `w_{y_i}`.

  Either explicit (`ClassWeights([0.5, 2.0, ...])`) or class-balanced from
  the training counts (`ClassWeights.effective_number(counts, beta)`). The
  weights are constants: they scale gradients but have none themselves.

  Args:
    weights: one finite weight >= 0 per class.
    name: the argument name used in error messages.
  """

  def __init__(self, weights: Sequence[float], *, name: str = "class_weights"):
    values = np.asarray(weights, dtype=np.float64).reshape(-1)
    if values.size < 2:
      raise ValueError(f"`{name}` needs one weight per class (at least 2), "
                       f"got {values.size}.")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
      raise ValueError(f"`{name}` must be finite and >= 0 for every class.")
    if not values.any():
      raise ValueError(f"`{name}` are all 0: every loss would be 0; give "
                       f"at least one class a positive weight.")
    self.values = values
    self.name = name

  @classmethod
  def effective_number(cls, class_counts: Sequence[float],
                       beta: float = 0.9999, *,
                       allow_empty: bool = False) -> ClassWeights:
    """Class-balanced weights `(1 - beta) / (1 - beta^n_c)`, summing to C.

    Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
    CVPR 2019 (see `class_balanced_weights`, also for `allow_empty`).
    """
    return cls(class_balanced_weights(class_counts, beta,
                                      allow_empty=allow_empty),
               name="class_counts")

  def __len__(self) -> int:
    return int(self.values.size)

  def check_classes(self, num_classes: int) -> None:
    """Raises a one-line ValueError unless there is one weight per class."""
    if self.values.size != num_classes:
      raise ValueError(f"`{self.name}` has {self.values.size} entries but "
                       f"`num_classes` is {num_classes}.")

  def __call__(self, onehot: tf.Tensor) -> tf.Tensor:
    """Per-example weights `[N]` from float32 one-hot labels `[N, C]`."""
    # A dense matvec, not a gather: safe under XLA and strategies.
    return tf.linalg.matvec(onehot, tf.constant(self.values, tf.float32))

  def config(self) -> list[float]:
    return [float(v) for v in self.values]


class FocalModulation:
  """The focal factor `m_i = (1 - p_i)^gamma` of the target probability.

  Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, make it
  part of the loss and back-propagate it (`back_propagate=True`); the CFAL
  authors (Mahbub et al. 2024) use `1 - d_iy` of the affinity instead and
  stop its gradient, so it only re-weights examples (`back_propagate=False`).
  `1 - p` is computed as `-expm1(log p)`, exact as p -> 1.

  Args:
    gamma: focusing parameter, >= 0 (0: the factor is 1).
    back_propagate: whether the factor's own gradient flows.
  """

  # Floor of 1 - p under a back-propagated power: keeps the derivative
  # gamma x^(gamma - 1) finite for gamma < 1.
  _FLOOR = 1e-30

  def __init__(self, gamma: float = 2.0, back_propagate: bool = True):
    self.gamma = registry.GAMMA.check(gamma)
    self.back_propagate = bool(back_propagate)

  def __call__(self, log_p: tf.Tensor) -> tf.Tensor:
    """`[N]` factors from the log target probabilities `[N]` (<= 0)."""
    one_minus_p = -tf.math.expm1(log_p)
    if not self.back_propagate:
      return tf.stop_gradient(
          tf.pow(tf.maximum(one_minus_p, 0.0), self.gamma))
    floored = tf.maximum(one_minus_p, self._FLOOR)
    return tf.where(one_minus_p > 0.0, tf.pow(floored, self.gamma), 0.0)

  def config(self) -> dict:
    return {"gamma": self.gamma, "back_propagate": self.back_propagate}


class Regularizer:
  """A scalar penalty on a head's variables, added to every example's loss.

  Subclasses implement `__call__(head) -> float32 scalar`. Added inside the
  class weight and the focal factor, like `R_w` in CFAL.
  """

  def __call__(self, head: Head) -> tf.Tensor:
    raise NotImplementedError

  def config(self) -> dict:
    return {"type": type(self).__name__}


class PrototypeSpread(Regularizer):
  """`weight * R_w`, the variance of the pairwise prototype distances.

  Hayat et al. 2019 (the affinity loss): with the M prototypes as points
  `w_a` (`head.prototype_points()`: `[M, D]`, unit vectors for the
  normalised-logit heads), `R_w` is the variance of `||w_a - w_b||^2` over
  all M(M-1)/2 pairs a < b. It is small when the prototypes are evenly
  spread. See `prototype_spread` for the exact O(M min(M, D) D) form.

  Args:
    weight: >= 0.
  """

  def __init__(self, weight: float = 1.0):
    self.weight = registry.SPREAD_WEIGHT.check(weight)

  def __call__(self, head: Head) -> tf.Tensor:
    if self.weight == 0.0:
      return tf.constant(0.0)
    return self.weight * prototype_spread(head.prototype_points())

  def config(self) -> dict:
    return {**super().config(), "weight": self.weight}


def prototype_spread(points: tf.Tensor) -> tf.Tensor:
  """`R_w` of `points` `[M, D]` (a float32 scalar; 0 for M < 2).

  The variance of the M(M-1)/2 pair distances `d_ab`, without the pairs.
  Centre the points (distances do not change) and write `n_a = ||w_a||^2`,
  `n = mean_a n_a`, `u_a = n_a - n`. Then
  `d_ab - mean(d) = u_a + u_b - 2 (w_a.w_b - g)` with `g = -n / (M-1)`, and
  summing its square over pairs gives, with K = W W^T [M, M] and
  G = W^T W [D, D] (the smaller one is formed):

    M(M-1) R_w = (2M + 4) sum_a u_a^2 + 4 sum_{a != b} (K_ab - g)^2
               = 2M sum_a u_a^2 + 4 ||G - (M n / D) I||_F^2
                 + 4 (M n)^2 (M - 1 - D) / (D (M - 1))

  (the second form for M > D + 1, from ||G||_F = ||K||_F). Every term is a
  sum of non-negative parts: nothing cancels, so float32 holds the value to
  ~1e-7 relative even near the optimum, where R_w -> 0 and the textbook
  E[d^2] - E[d]^2 loses every digit. That lets the O(M min(M, D) D) Gram
  matmul run in float32: with its gradient, 2.1x faster than float64 at
  10,000 x 512 on a 2-core CPU.
  """
  m, dim = int(points.shape[0]), int(points.shape[-1])
  if m < 2:
    return tf.constant(0.0)
  w = tf.cast(points, tf.float32)
  # Twice: far from the origin the first mean is rounded, and the closed
  # forms below use sum_a w_a = 0.
  w -= tf.reduce_mean(w, axis=0)
  w -= tf.reduce_mean(w, axis=0)
  norms = tf.reduce_sum(tf.square(w), axis=-1)
  mean_norm = tf.reduce_mean(norms)
  deviations = tf.reduce_sum(tf.square(norms - mean_norm))
  if m <= dim + 1:
    gram = tf.matmul(w, w, transpose_b=True)                      # K
    off = tf.linalg.set_diag(gram + mean_norm / (m - 1),
                             tf.zeros([m], gram.dtype))            # K - g
    total = (2 * m + 4) * deviations + 4 * tf.reduce_sum(tf.square(off))
  else:
    gram = tf.matmul(w, w, transpose_a=True)                      # G
    tau = m * mean_norm / dim
    centred = tf.linalg.set_diag(gram, tf.linalg.diag_part(gram) - tau)
    total = (2 * m * deviations + 4 * tf.reduce_sum(tf.square(centred))
             + 4 * tf.square(m * mean_norm)
             * ((m - 1 - dim) / (dim * (m - 1))))
  return total / (m * (m - 1))


def as_class_weights(value: ClassWeights | Sequence[float] | None,
                     num_classes: int) -> ClassWeights | None:
  """`value` as a `ClassWeights` with one weight per class (or None)."""
  if value is None:
    return None
  weights = value if isinstance(value, ClassWeights) else ClassWeights(value)
  weights.check_classes(num_classes)
  return weights


def as_regularizers(value: Regularizer | Sequence[Regularizer] | None
                    ) -> tuple[Regularizer, ...]:
  """`value` as a tuple of regularisers; a TypeError for anything else."""
  if value is None:
    return ()
  items = (value,) if isinstance(value, Regularizer) else tuple(value)
  for item in items:
    if not isinstance(item, Regularizer):
      raise TypeError(f"`regularizers` must be Regularizer objects (e.g. "
                      f"PrototypeSpread(1.0)), got {item!r}.")
  return items


__all__ = ["ClassWeights", "FocalModulation", "PrototypeSpread",
           "Regularizer", "class_balanced_weights", "prototype_spread"]
