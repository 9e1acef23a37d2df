"""SphereFace: multiplicative angular margin (Liu et al. 2017)."""

from __future__ import annotations

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
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               scale: float = 64.0, margin: float = 1.35,
               seed: int | None = None, name: str | None = None):
    if not float(margin) >= 1.0:
      raise ValueError(f"SphereFace `margin` ({margin}) multiplies the angle "
                       f"and must be >= 1; 1.35 is ArcFace's baseline value.")
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     m1=margin, m2=0.0, m3=0.0, scale=scale, seed=seed,
                     name=name)
    self.margin = self.m1

  def config(self):
    return {"num_classes": self.num_classes,
            "embedding_dim": self.embedding_dim, "scale": self.scale,
            "margin": self.margin}
