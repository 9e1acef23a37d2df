"""LDAM: label-distribution-aware margins (Cao et al. 2019)."""

from __future__ import annotations

from typing import Sequence

from cfal.heads import base, class_counts as counts_lib, parts
from cfal.heads.cosface import CosFace


class LDAM(CosFace):
  """Cosine logits with a margin per class that grows as the class shrinks.

  Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware
  Margin Loss", NeurIPS 2019: with `n_j` the training examples of class
  j,

    Delta_j = K / n_j^(1/4),
    loss_i = -log [ e^{s (cos_iy - Delta_y)} /
                    (e^{s (cos_iy - Delta_y)} + sum_{j != y} e^{s cos_ij}) ],

  the cosines those of L2-normalised embeddings and class weights (the
  authors' normalised linear layer) and K set so that the largest margin,
  the rarest class's, is `max_margin`: `Delta_j = max_margin (n_min /
  n_j)^(1/4)`. This is CosFace with per-class margins,
  `CosFace(margin=max_margin, margin_counts_power=0.25)`, and runs that
  code. Prediction is `argmax_j cos_ij`; `__call__` returns `s * cos`
  without labels. The paper's deferred re-weighting (DRW: class weights
  switched on late in training) is a schedule, not part of the loss;
  constant class weights compose as on any head (see `Head`). A class
  with no examples gets the largest margin and shifts no other (see
  `cfal.heads.class_counts`).

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    scale: logit scale s (default 30, the authors' value).
    max_margin: the largest margin, in [0, 2] (default 0.5, the authors').
    class_counts: training examples per class, finite and >= 0 (required).
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of the softmax target probability.
    regularizers: optional `Regularizer`s on the unit prototypes.
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  POWER = 0.25   # Delta_j ~ n_j^(-1/4), the paper's exponent.

  def __init__(self, *, num_classes: int, embedding_dim: int,
               scale: float = 30.0, max_margin: float = 0.5,
               class_counts: Sequence[float] | None = None,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    values = base.checked("ldam", scale=scale, max_margin=max_margin)
    # Checked here too, so the message names LDAM's margins.
    counts_lib.checked_counts(class_counts, num_classes, head="LDAM",
                              purpose="its margins")
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     scale=values["scale"], margin=values["max_margin"],
                     class_counts=class_counts,
                     margin_counts_power=self.POWER,
                     class_weights=class_weights, focal=focal,
                     regularizers=regularizers, seed=seed, name=name)
    self.max_margin = self.margin

  def config(self):
    config = super().config()
    for key in ("margin", "margin_counts_power", "margin_floor_ratio"):
      del config[key]
    return {**config, "max_margin": self.max_margin}
