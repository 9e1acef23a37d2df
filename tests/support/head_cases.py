"""One registry of small head configurations that every generic test uses.

A head added to `cfal.heads.HEADS` must appear here (a test checks), so it
gets the eager/function/XLA, strategy, checkpoint and precision tests for
free.
"""

from __future__ import annotations

import cfal.heads as heads

NUM_CLASSES = 5
EMBEDDING_DIM = 8
COUNTS = [400, 120, 40, 12, 4]
# The long tail at its extremes: 1e5 examples down to one, and none.
TAIL_COUNTS = [100_000, 2_000, 30, 1, 0]

# id -> constructor keyword arguments (num_classes/embedding_dim added).
CASES: dict[str, tuple[type, dict]] = {
    "softmax": (heads.Softmax, {}),
    "focal": (heads.Focal, {"gamma": 2.0}),
    "focal_balanced": (heads.Focal, {"gamma": 1.0, "class_counts": COUNTS,
                                     "beta": 0.99}),
    "arcface": (heads.ArcFace, {"scale": 16.0, "margin": 0.5}),
    "subcenter_arcface": (heads.SubCenterArcFace, {
        "scale": 16.0, "margin": 0.5, "num_subcenters": 3}),
    "cosface": (heads.CosFace, {"scale": 16.0, "margin": 0.35}),
    "sphereface": (heads.SphereFace, {"scale": 16.0, "margin": 1.35}),
    "combined_margin": (heads.CombinedMargin,
                        {"m1": 1.0, "m2": 0.3, "m3": 0.2, "scale": 16.0}),
    "center_loss": (heads.CenterLoss, {"alpha": 0.5, "center_weight": 0.1}),
    "center_loss_gradient": (heads.CenterLoss,
                             {"center_weight": 0.1,
                              "center_update": "gradient"}),
    "affinity": (heads.Affinity, {"sigma": 4.0, "margin": 0.75}),
    "affinity_3c": (heads.Affinity, {"sigma": 4.0, "num_centers": 3}),
    "cfal": (heads.CFAL, {"sigma": 4.0, "gamma": 2.0, "class_counts": COUNTS,
                          "beta": 0.999}),
    "cfal_3c": (heads.CFAL, {"sigma": 4.0, "num_centers": 3, "gamma": 0.5}),
    # Heads composed from loss parts (cfal.heads.parts).
    "arcface_balanced": (heads.ArcFace, {
        "scale": 16.0, "margin": 0.5,
        "class_weights": heads.ClassWeights.effective_number(COUNTS, 0.99)}),
    "cosface_focal": (heads.CosFace, {
        "scale": 16.0, "margin": 0.35, "focal": heads.FocalModulation(2.0)}),
    "softmax_weighted": (heads.Softmax, {
        "class_weights": [0.5, 1.0, 2.0, 4.0, 8.0]}),
    "softmax_focal_spread": (heads.Softmax, {
        "focal": heads.FocalModulation(0.5),
        "regularizers": [heads.PrototypeSpread(0.5)]}),
    "center_loss_spread": (heads.CenterLoss, {
        "center_weight": 0.1, "center_update": "gradient",
        "regularizers": [heads.PrototypeSpread(0.1)]}),
    "affinity_backprop_focal": (heads.Affinity, {
        "sigma": 4.0, "num_centers": 2,
        "focal": heads.FocalModulation(2.0, back_propagate=True),
        "class_weights": heads.ClassWeights.effective_number(COUNTS)}),
    # Long-tail heads: priors and per-class margins from the counts.
    "arcface_count_margins": (heads.ArcFace, {
        "scale": 16.0, "margin": 0.5, "class_counts": TAIL_COUNTS,
        "margin_counts_power": 0.25, "margin_floor_ratio": 0.1}),
    "subcenter_arcface_count_margins": (heads.SubCenterArcFace, {
        "scale": 16.0, "margin": 0.5, "num_subcenters": 2,
        "class_counts": TAIL_COUNTS, "margin_counts_power": 0.25,
        "margin_floor_ratio": 0.1}),
    "combined_margin_count_margins": (heads.CombinedMargin, {
        "m1": 1.0, "m2": 0.3, "m3": 0.2, "scale": 16.0,
        "class_counts": COUNTS, "margin_counts_power": 0.5}),
    "ldam": (heads.LDAM, {"scale": 16.0, "max_margin": 0.5,
                          "class_counts": TAIL_COUNTS}),
    "logit_adjusted": (heads.LogitAdjusted, {"tau": 1.5,
                                             "class_counts": COUNTS}),
    "balanced_softmax": (heads.BalancedSoftmax, {"class_counts": TAIL_COUNTS,
                                                 "use_bias": False}),
    "logit_adjusted_focal_weighted": (heads.LogitAdjusted, {
        "class_counts": TAIL_COUNTS, "focal": heads.FocalModulation(2.0),
        "class_weights": [0.5, 1.0, 2.0, 4.0, 8.0]}),
}


def make_head(case: str, seed: int = 0, **overrides) -> heads.Head:
  cls, kwargs = CASES[case]
  return cls(num_classes=NUM_CLASSES, embedding_dim=EMBEDDING_DIM, seed=seed,
             **{**kwargs, **overrides})


def set_linear(head, W, b, use_bias):
  """Puts float64 weights `W` (and bias `b`) into a linear-classifier
  head as float32; returns the variables to differentiate."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  head.prototypes.assign(W.astype(np.float32))
  variables = [head.prototypes]
  if use_bias:
    head.bias.assign(b.astype(np.float32))
    variables.append(head.bias)
  return variables
