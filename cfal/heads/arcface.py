"""ArcFace: additive angular margin (Deng et al. 2019)."""

from __future__ import annotations

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
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               scale: float = 64.0, margin: float = 0.5,
               seed: int | None = None, name: str | None = None):
    if not 0.0 <= float(margin) < 3.141592653589793:
      raise ValueError(f"ArcFace `margin` ({margin}) is an angle in radians "
                       f"and must be in [0, pi); 0.5 is the paper's value.")
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     m1=1.0, m2=margin, m3=0.0, scale=scale, seed=seed,
                     name=name)
    self.margin = self.m2

  def config(self):
    return {"num_classes": self.num_classes,
            "embedding_dim": self.embedding_dim, "scale": self.scale,
            "margin": self.margin}
