"""Build a head by registry name from user options and the data's counts."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from cfal.heads import base, parts, registry

# Used for effective-number weights on heads without their own `beta`; the
# same default as Focal's and CFAL's.
DEFAULT_BETA = 0.9999


def build_head(name: str, *, num_classes: int, embedding_dim: int,
               class_counts: Sequence[int] | None = None,
               seed: int | None = None, **options: Any) -> base.Head:
  """The head `name` with `options`, composed with the loss parts they ask.

  `options` are the ones a user set (e.g. from the command line), checked
  through `cfal.heads.registry` first. A head's own hyper-parameters go to
  its constructor. The generic ones become parts for heads that do not
  take them themselves:

  * `class_weighting`: "auto" (default) is the head's own default:
    effective-number weights from `class_counts` for Focal and CFAL, none
    for the others; "effective_number" asks for them on any head (with
    `beta`, default 0.9999); "none" turns them off.
  * `class_counts` themselves go to heads whose logits use them
    (`Head.counts_set_logits`: the priors of LogitAdjusted, the margins of
    LDAM), whatever the class weighting.
  * `class_weights`: explicit per-class weights (with "auto" only).
  * `gamma` (> 0): a `FocalModulation`, back-propagated except on the
    affinity heads (`Head.focal_back_propagate`).
  * `spread_weight` (> 0): a `PrototypeSpread` regulariser.

  Args:
    name: a registry name (`cfal.heads.registry.HEADS`).
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    class_counts: training examples per class, for class weighting.
    seed: makes the initial variables reproducible.
    **options: option name -> value (command-line strings are parsed).

  Returns:
    The head, its variables created.

  Raises:
    ValueError: one line. "Unknown --head='nope'; choose one of ..." for
      an unknown name; otherwise it starts with "--head=<name>: " and names
      the option: out of range, not taken by the head, or a bad
      combination (effective-number weighting without counts, class
      weights of the wrong length, `beta` without effective-number
      weighting, ...).
  """
  options = registry.check_head_options(name, options)
  cls = registry.HEADS[name].load()
  takes = inspect.signature(cls.__init__).parameters
  try:
    kwargs = _constructor_arguments(cls, takes, options, class_counts)
    return cls(num_classes=num_classes, embedding_dim=embedding_dim,
               seed=seed, **kwargs)
  except ValueError as error:
    raise ValueError(f"--head={name}: {error}") from None


def _constructor_arguments(cls: type, takes: Any, options: dict,
                           class_counts: Sequence[int] | None) -> dict:
  """Checked options -> the constructor's keyword arguments."""
  options = dict(options)
  kwargs: dict[str, Any] = {}
  weighting = options.pop("class_weighting", "auto")
  explicit = options.pop("class_weights", None)
  own_beta = "beta" in takes
  beta = options.get("beta") if own_beta else options.pop("beta", None)
  # Counts that shape the logits are passed as they are; otherwise a
  # constructor's `class_counts` are its own (default) class weighting.
  counts_in_logits = "class_counts" in takes and cls.counts_set_logits
  if counts_in_logits and class_counts is not None:
    kwargs["class_counts"] = list(class_counts)
  takes_counts = "class_counts" in takes and not counts_in_logits
  effective = weighting == "effective_number" or (weighting == "auto"
                                                  and takes_counts)
  if explicit is not None:
    if weighting != "auto":
      raise ValueError(f"`class_weights` are explicit per-class weights; "
                       f"they contradict class_weighting={weighting}.")
    kwargs["class_weights"] = explicit
    effective = False
  elif effective and class_counts is None and weighting != "auto":
    raise ValueError("class_weighting=effective_number needs the class "
                     "counts of the training data.")
  elif effective and class_counts is not None:
    if takes_counts:
      kwargs["class_counts"] = list(class_counts)
    else:
      kwargs["class_weights"] = parts.ClassWeights.effective_number(
          class_counts, DEFAULT_BETA if beta is None else beta)
  if beta is not None and not (effective and class_counts is not None):
    raise ValueError(f"`beta` ({beta:g}) sets effective-number class "
                     f"weights, which this head does not use here; add "
                     f"class_weighting=effective_number (with class counts) "
                     f"or drop it.")

  if "gamma" not in takes and options.get("gamma", None) is not None:
    gamma = options.pop("gamma")
    if gamma > 0:
      kwargs["focal"] = parts.FocalModulation(
          gamma, back_propagate=cls.focal_back_propagate)
  if ("spread_weight" not in takes
      and options.get("spread_weight", None) is not None):
    weight = options.pop("spread_weight")
    if weight > 0:
      kwargs["regularizers"] = (parts.PrototypeSpread(weight),)

  for key, value in options.items():
    if key not in takes:   # a declared option the constructor lacks
      raise AssertionError(f"{cls.__name__} takes no {key!r}")
    kwargs[key] = value
  return kwargs
