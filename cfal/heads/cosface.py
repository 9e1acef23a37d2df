"""CosFace: additive cosine margin (Wang et al. 2018)."""

from __future__ import annotations

from cfal.heads.combined_margin import CombinedMargin


class CosFace(CombinedMargin):
  """Additive cosine margin: target logit `s * (cos(theta) - m)`.

  Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face
  Recognition", CVPR 2018 (also AM-Softmax). This is
  `CombinedMargin(1, 0, m)`.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    scale: logit scale s (default 64).
    margin: cosine margin m, in [0, 2] (default 0.35).
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               scale: float = 64.0, margin: float = 0.35,
               seed: int | None = None, name: str | None = None):
    if not 0.0 <= float(margin) <= 2.0:
      raise ValueError(f"CosFace `margin` ({margin}) is subtracted from a "
                       f"cosine and must be in [0, 2]; 0.35 is the paper's.")
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     m1=1.0, m2=0.0, m3=margin, scale=scale, seed=seed,
                     name=name)
    self.margin = self.m3

  def config(self):
    return {"num_classes": self.num_classes,
            "embedding_dim": self.embedding_dim, "scale": self.scale,
            "margin": self.margin}
