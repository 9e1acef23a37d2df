"""Balanced Softmax (Ren et al. 2020): logit adjustment with tau = 1."""

from __future__ import annotations

from typing import Sequence

from cfal.heads import parts
from cfal.heads.logit_adjusted import LogitAdjusted


class BalancedSoftmax(LogitAdjusted):
  """Softmax cross-entropy on the prior-weighted softmax of Ren et al.

  Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
  NeurIPS 2020: with linear logits `f` and training class counts `n`,

    phi_j = n_j e^{f_j} / sum_k n_k e^{f_k},   loss_i = -log phi_{y_i},

  and prediction `argmax_j f_j`. Since `n_j e^{f_j} = e^{f_j + log n_j}`
  and `log n_j = log pi_j + const`, this is `LogitAdjusted` with tau = 1
  (Menon et al. 2021), which is what it is here. (The paper's Meta
  Sampler, a learned class-balanced sampler, is not part of the loss.) A
  class with no examples counts as one, as in `LogitAdjusted`.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    class_counts: training examples per class, finite and >= 0 (required).
    use_bias: add a bias to the logits (default True).
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of the balanced target probability.
    regularizers: optional `Regularizer`s on the weight rows.
    seed: makes the initial weights reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               class_counts: Sequence[float] | None = None,
               use_bias: bool = True,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     tau=1.0, class_counts=class_counts, use_bias=use_bias,
                     class_weights=class_weights, focal=focal,
                     regularizers=regularizers, seed=seed, name=name)

  def config(self):
    config = super().config()
    del config["tau"]
    return config
