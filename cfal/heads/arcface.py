"""ArcFace: additive angular margin (Deng et al. 2019)."""

from __future__ import annotations

from typing import Sequence

from cfal.heads import base, parts
from cfal.heads.combined_margin import CombinedMargin


class ArcFace(CombinedMargin):
  """Additive angular margin: target logit `s * cos(theta + m)`.

  Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
  Recognition", CVPR 2019. Where `theta + m > pi` the target logit falls
  back to `s * (cos(theta) - m * sin(m))` as insightface does, so the loss
  keeps decreasing as theta shrinks. This is `CombinedMargin(1, m, 0)`.

  Dynamic margins: with `class_counts` and `margin_counts_power` lambda >
  0, class c uses `m_c = m * (rho + (1 - rho) (n_min / n_c)^lambda)`, the
  `a n_c^(-lambda) + b` "dynamic margins" of Ha et al., "Google Landmark
  Recognition 2020 Competition Third Place Solution", arXiv:2010.05350
  (e.g. lambda = 1/4, rho = 0.1: margins from 0.05 up to 0.5).

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    scale: logit scale s (default 64).
    margin: angular margin m in radians, in [0, pi) (default 0.5).
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
               scale: float = 64.0, margin: float = 0.5,
               class_counts: Sequence[float] | None = None,
               margin_counts_power: float = 0.0,
               margin_floor_ratio: float = 0.0,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    values = base.checked("arcface", scale=scale, margin=margin,
                          margin_counts_power=margin_counts_power,
                          margin_floor_ratio=margin_floor_ratio)
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     m1=1.0, m2=values["margin"], m3=0.0, scale=values["scale"],
                     class_counts=class_counts,
                     margin_counts_power=values["margin_counts_power"],
                     margin_floor_ratio=values["margin_floor_ratio"],
                     class_weights=class_weights, focal=focal,
                     regularizers=regularizers, seed=seed, name=name)
    self.margin = self.m2

  def config(self):
    config = super().config()
    for key in ("m1", "m2", "m3"):
      del config[key]
    return {**config, "margin": self.margin}
