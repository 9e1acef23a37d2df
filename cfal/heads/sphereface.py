"""SphereFace: multiplicative angular margin (Liu et al. 2017)."""

from __future__ import annotations

from typing import Sequence

from cfal.heads import base, parts
from cfal.heads.combined_margin import CombinedMargin


class SphereFace(CombinedMargin):
  """Multiplicative angular margin: target logit `s * psi(m * theta)`.

  Liu et al., "SphereFace: Deep Hypersphere Embedding for Face
  Recognition", CVPR 2017, with `psi(u) = (-1)^k cos(u) - 2k`,
  `k = floor(u / pi)`, the paper's decreasing continuation of `cos(m theta)`.
  Features are normalised and scaled by s as in the combined-margin
  framework of ArcFace (Deng et al. 2019), whose SphereFace baseline uses
  m = 1.35: `CombinedMargin(m, 0, 0)`.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    scale: logit scale s (default 64).
    margin: multiplicative margin m >= 1 (default 1.35).
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of the softmax target probability.
    regularizers: optional `Regularizer`s on the unit prototypes.
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               scale: float = 64.0, margin: float = 1.35,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    values = base.checked("sphereface", scale=scale, margin=margin)
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     m1=values["margin"], m2=0.0, m3=0.0, scale=values["scale"],
                     class_weights=class_weights, focal=focal,
                     regularizers=regularizers, seed=seed, name=name)
    self.margin = self.m1

  def config(self):
    config = super().config()
    for key in ("m1", "m2", "m3"):
      del config[key]
    return {**config, "margin": self.margin}
