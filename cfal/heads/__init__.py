"""Max-margin classification heads: plain tf.Modules with one contract.

Every head: `head(embeddings, labels=None, training=False)` -> scores [N, C],
`head.loss(embeddings, labels)` -> per-example float32 [N],
`head.predict(embeddings)` -> int32 [N], the assignable `head.prototypes`
variable, and `head.update(embeddings, labels)` for non-gradient updates.
Loss parts (`ClassWeights`, `FocalModulation`, `PrototypeSpread`) compose
with any head; `build_head(name, ...)` builds one from registry options.

The names below load lazily: `import cfal.heads` (and
`cfal.heads.registry`, the TensorFlow-free declarations) does not import
TensorFlow until a head, a part or `build_head` is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cfal.heads import registry   # declarations only: no TensorFlow

if TYPE_CHECKING:
  from cfal.heads.affinity import Affinity
  from cfal.heads.arcface import ArcFace
  from cfal.heads.balanced_softmax import BalancedSoftmax
  from cfal.heads.base import Head
  from cfal.heads.center_loss import CenterLoss
  from cfal.heads.cfal import CFAL
  from cfal.heads.combined_margin import CombinedMargin
  from cfal.heads.cosface import CosFace
  from cfal.heads.factory import build_head
  from cfal.heads.focal import Focal
  from cfal.heads.ldam import LDAM
  from cfal.heads.logit_adjusted import LogitAdjusted
  from cfal.heads.parts import (ClassWeights, FocalModulation,
                                PrototypeSpread, Regularizer,
                                class_balanced_weights)
  from cfal.heads.registry import check_head_options
  from cfal.heads.softmax import Softmax
  from cfal.heads.sphereface import SphereFace

# Public name -> the module defining it. Every class named in the
# registry (`registry.HEADS[...].target`) is exported as well.
_EXPORTS = {
    "Head": "base", "ClassWeights": "parts", "FocalModulation": "parts",
    "PrototypeSpread": "parts", "Regularizer": "parts",
    "class_balanced_weights": "parts", "build_head": "factory",
    "check_head_options": "registry",
}


def _exports() -> dict[str, str]:
  exports = dict(_EXPORTS)
  for spec in registry.HEADS.values():
    module, _, attribute = spec.target.partition(":")
    exports[attribute] = module.rpartition(".")[2]
  return exports


def __getattr__(name: str) -> Any:
  if name == "HEADS":
    # Registry name -> class, for the tests and the examples; the
    # declarations are `cfal.heads.registry.HEADS`.
    value = {key: spec.load() for key, spec in registry.HEADS.items()}
  elif name in _exports():
    module = importlib.import_module(f"cfal.heads.{_exports()[name]}")
    value = getattr(module, name)
  else:
    raise AttributeError(f"module 'cfal.heads' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))


__all__ = sorted([*_exports(), "HEADS"])
