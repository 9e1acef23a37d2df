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

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    scale: logit scale s (default 64).
    margin: angular margin m in radians, in [0, pi) (default 0.5).
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of the softmax target probability.
    regularizers: optional `Regularizer`s on the unit prototypes.
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               scale: float = 64.0, margin: float = 0.5,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    values = base.checked("arcface", scale=scale, margin=margin)
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     m1=1.0, m2=values["margin"], m3=0.0, scale=values["scale"],
                     class_weights=class_weights, focal=focal,
                     regularizers=regularizers, seed=seed, name=name)
    self.margin = self.m2

  def config(self):
    config = super().config()
    for key in ("m1", "m2", "m3"):
      del config[key]
    return {**config, "margin": self.margin}
