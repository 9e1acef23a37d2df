"""Max-margin classification heads: plain tf.Modules with one contract.

Every head: `head(embeddings, labels=None, training=False)` -> scores [N, C],
`head.loss(embeddings, labels)` -> per-example float32 [N],
`head.predict(embeddings)` -> int32 [N], the assignable `head.prototypes`
variable, and `head.update(embeddings, labels)` for non-gradient updates.
"""

from cfal.heads.affinity import Affinity
from cfal.heads.arcface import ArcFace
from cfal.heads.base import Head, class_balanced_weights
from cfal.heads.center_loss import CenterLoss
from cfal.heads.cfal import CFAL
from cfal.heads.combined_margin import CombinedMargin
from cfal.heads.cosface import CosFace
from cfal.heads.focal import Focal
from cfal.heads.softmax import Softmax
from cfal.heads.sphereface import SphereFace

# Registry name -> class, used by train.py's --head flag and the tests.
HEADS = {
    "softmax": Softmax,
    "focal": Focal,
    "arcface": ArcFace,
    "cosface": CosFace,
    "sphereface": SphereFace,
    "combined_margin": CombinedMargin,
    "center_loss": CenterLoss,
    "affinity": Affinity,
    "cfal": CFAL,
}

__all__ = [
    "Affinity", "ArcFace", "CFAL", "CenterLoss", "CombinedMargin", "CosFace",
    "Focal", "HEADS", "Head", "Softmax", "SphereFace",
    "class_balanced_weights",
]
