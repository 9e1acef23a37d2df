"""CosFace: additive cosine margin (Wang et al. 2018)."""

from __future__ import annotations

from typing import Sequence

from cfal.heads import base, parts
from cfal.heads.combined_margin import CombinedMargin


class CosFace(CombinedMargin):
  """Additive cosine margin: target logit `s * (cos(theta) - m)`.

  Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face
  Recognition", CVPR 2018 (also AM-Softmax). This is
  `CombinedMargin(1, 0, m)`. With `class_counts` and `margin_counts_power`
  lambda > 0 each class gets its own margin,
  `m * (rho + (1 - rho) (n_min / n_c)^lambda)`; lambda = 1/4, rho = 0 is
  LDAM (`cfal.heads.LDAM`).

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    scale: logit scale s (default 64).
    margin: cosine margin m, in [0, 2] (default 0.35).
    class_counts: training examples per class, for per-class margins.
    margin_counts_power: lambda >= 0: class c's margin is
      `margin * (rho + (1 - rho) (n_min / n_c)^lambda)` (see
      `CombinedMargin`); 0 (default) gives every class `margin`.
    margin_floor_ratio: rho in [0, 1] (default 0).
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of the softmax target probability.
    regularizers: optional `Regularizer`s on the unit prototypes.
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               scale: float = 64.0, margin: float = 0.35,
               class_counts: Sequence[float] | None = None,
               margin_counts_power: float = 0.0,
               margin_floor_ratio: float = 0.0,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    values = base.checked("cosface", scale=scale, margin=margin,
                          margin_counts_power=margin_counts_power,
                          margin_floor_ratio=margin_floor_ratio)
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     m1=1.0, m2=0.0, m3=values["margin"], scale=values["scale"],
                     class_counts=class_counts,
                     margin_counts_power=values["margin_counts_power"],
                     margin_floor_ratio=values["margin_floor_ratio"],
                     class_weights=class_weights, focal=focal,
                     regularizers=regularizers, seed=seed, name=name)
    self.margin = self.m3

  def config(self):
    config = super().config()
    for key in ("m1", "m2", "m3"):
      del config[key]
    return {**config, "margin": self.margin}
