"""Focal loss on a linear classifier (Lin et al. 2017)."""

from __future__ import annotations

from typing import Sequence

from cfal.heads import base, parts
from cfal.heads.softmax import Softmax


class Focal(Softmax):
  """Linear classifier trained with the focal loss.

  Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017:
  `loss_i = -a_{y_i} (1 - p_{i,y_i})^gamma log p_{i,y_i}` with
  `p_i = softmax(x_i W^T + b)`. This is `Softmax` with a back-propagated
  `FocalModulation(gamma)` (as in the paper) and optional `ClassWeights`
  `a`: explicit (`alpha` or `class_weights`) or the class-balanced weights
  of Cui et al. 2019 from `class_counts`. `gamma = 0` and no class weights
  give plain cross-entropy.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    gamma: focusing parameter, >= 0 (default 2).
    alpha: optional per-class weights `a_c` (length C, >= 0); the paper's
      name for `class_weights`.
    class_counts: optional training examples per class; when given, `a`
      are the class-balanced weights (see `class_balanced_weights`).
    beta: effective-number parameter for `class_counts`, in [0, 1).
    use_bias: add a bias to the logits.
    class_weights: optional per-class weights (`ClassWeights` or floats);
      at most one of `alpha`, `class_counts` and `class_weights`.
    regularizers: optional `Regularizer`s on the weight rows.
    seed: makes the initial weights reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               gamma: float = 2.0, alpha: Sequence[float] | None = None,
               class_counts: Sequence[float] | None = None,
               beta: float = 0.9999, use_bias: bool = True,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    values = base.checked("focal", gamma=gamma, beta=beta)
    given = [n for n, v in (("alpha", alpha), ("class_counts", class_counts),
                            ("class_weights", class_weights)) if v is not None]
    if len(given) > 1:
      raise ValueError(f"Pass either `{given[0]}` or `{given[1]}` to Focal, "
                       f"not both.")
    if alpha is not None:
      class_weights = parts.ClassWeights(alpha, name="alpha")
    elif class_counts is not None:
      class_weights = parts.ClassWeights.effective_number(class_counts,
                                                          values["beta"])
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     use_bias=use_bias, class_weights=class_weights,
                     focal=parts.FocalModulation(values["gamma"],
                                                 back_propagate=True),
                     regularizers=regularizers, seed=seed, name=name)
    self.gamma, self.beta = values["gamma"], values["beta"]

  def config(self):
    return {**super().config(), "gamma": self.gamma, "beta": self.beta}
