"""The heads' declared options, readable without TensorFlow.

One `Spec` per head: where its class lives and every keyword a user may set
from the command line, with its type, range and help. The heads check their
constructor arguments through these declarations (`cfal.heads.base
.checked`), `cfal.heads.build_head` checks a whole option set through them,
and train.py derives its flags and usage errors from them. This module
imports only `cfal.options`: never TensorFlow, never another head module,
so a bad option is reported before TensorFlow loads.

Two kinds of options:

* a head's own hyper-parameters (`scale`, `margin`, `sigma`, ...), passed
  to its constructor as they are;
* the loss parts every head accepts (`GENERIC`): class weighting, focal
  modulation and the prototype-spread regulariser. Heads whose constructor
  takes one of these names (Focal, CFAL: `gamma`, `beta`; Affinity, CFAL:
  `spread_weight`) receive it directly; for the others `build_head` turns it
  into the matching part (`cfal.heads.parts`).

A name means one thing and has one type in every head. Only `margin`
differs in range (and wording) from head to head: it is the head's margin,
an angle for ArcFace and sub-center ArcFace, a cosine for CosFace, a
multiplier for SphereFace and the hinge lambda for Affinity/CFAL.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from cfal.options import Option, Spec

# ---------------------------------------------------------------------------
# Options shared by several heads: one object each, so one meaning and type.

SCALE = Option("scale", "float", "Logit scale s of the normalised-logit "
               "heads.", low=0.0, low_open=True)
SIGMA = Option("sigma", "float", "Gaussian bandwidth of the affinity "
               "d = exp(-||x - w||^2 / sigma).", low=0.0, low_open=True)
NUM_CENTERS = Option("num_centers", "int", "Prototypes (centers) per "
                     "class.", low=1)
NUM_SUBCENTERS = Option("num_subcenters", "int", "Sub-center ArcFace: "
                        "sub-centers K per class; a class's cosine is the "
                        "largest of its K.", low=1)
USE_BIAS = Option("use_bias", "bool", "Add a per-class bias to the linear "
                  "logits.")
M1 = Option("m1", "float", "Multiplicative angular margin (SphereFace's "
            "m), cos(m1 theta + m2) - m3.", low=1.0)
M2 = Option("m2", "float", "Additive angular margin in radians (ArcFace's "
            "m).", low=0.0, high=math.pi, high_open=True)
M3 = Option("m3", "float", "Additive cosine margin (CosFace's m).", low=0.0)

# The long-tail options: priors and per-class margins from the class counts
# (see cfal.heads.class_counts).
MARGIN_COUNTS_POWER = Option(
    "margin_counts_power", "float", "Per-class margins from the class "
    "counts: class c gets margin * (r + (1 - r) (n_min / n_c)^lambda), "
    "lambda this power and r margin_floor_ratio, so rarer classes get "
    "larger margins (LDAM: 1/4); 0 gives every class the same margin.",
    low=0.0)
MARGIN_FLOOR_RATIO = Option(
    "margin_floor_ratio", "float", "Per-class margins: the fraction r of "
    "the margin that every class keeps however many examples it has.",
    low=0.0, high=1.0)
MAX_MARGIN = Option("max_margin", "float", "LDAM: the largest per-class "
                    "cosine margin, the rarest class's; class j gets "
                    "max_margin (n_min / n_j)^(1/4).", low=0.0, high=2.0)
TAU = Option("tau", "float", "Logit adjustment: the training loss sees "
             "f_j + tau log(pi_j), pi the training class priors (Menon et "
             "al. 2021); tau = 1 is Balanced Softmax.", low=0.0)

# The loss parts every head takes (see cfal.heads.parts).
CLASS_WEIGHTING = Option(
    "class_weighting", "str", "Per-class loss weights: auto (the head's "
    "default: effective-number weights from the class counts for focal and "
    "cfal, none for the others), none, or effective_number (Cui et al. "
    "2019, from the class counts and beta). Explicit weights: "
    "class_weights.", choices=("auto", "none", "effective_number"))
CLASS_WEIGHTS = Option("class_weights", "floats", "Explicit per-class loss "
                       "weights, one per class.", low=0.0)
BETA = Option("beta", "float", "Effective-number beta of the class-balanced "
              "weights (1 - beta) / (1 - beta^n_c).", low=0.0, high=1.0,
              high_open=True)
GAMMA = Option("gamma", "float", "Focusing parameter: the loss is scaled by "
               "(1 - p_y)^gamma (p_y the target probability, d_iy for the "
               "affinity heads); 0 turns it off.", low=0.0)
SPREAD_WEIGHT = Option("spread_weight", "float", "Weight of the "
                       "prototype-spread regulariser R_w (variance of the "
                       "pairwise prototype distances); 0 turns it off.",
                       low=0.0)

GENERIC: tuple[Option, ...] = (CLASS_WEIGHTING, CLASS_WEIGHTS, BETA, GAMMA,
                               SPREAD_WEIGHT)
GENERIC_NAMES: tuple[str, ...] = tuple(o.name for o in GENERIC)

# Each head's margin.
_MARGINS = {
    "arcface": Option(
        "margin", "float", "ArcFace: additive angular margin in radians.",
        low=0.0, high=math.pi, high_open=True,
        message="ArcFace `margin` ({value}) is an angle in radians and must "
                "be in [0, pi); 0.5 is the paper's value."),
    "cosface": Option(
        "margin", "float", "CosFace: additive cosine margin.", low=0.0,
        high=2.0,
        message="CosFace `margin` ({value}) is subtracted from a cosine and "
                "must be in [0, 2]; 0.35 is the paper's."),
    "sphereface": Option(
        "margin", "float", "SphereFace: multiplicative angular margin.",
        low=1.0,
        message="SphereFace `margin` ({value}) multiplies the angle and must "
                "be >= 1; 1.35 is ArcFace's baseline value."),
    "affinity": Option(
        "margin", "float", "Affinity/CFAL: the margin lambda of the hinge "
        "max(0, lambda + d_ij - d_iy).", low=0.0),
}
_MARGINS["cfal"] = _MARGINS["affinity"]


def _spec(name: str, target: str, summary: str,
          *own: Option) -> Spec:
  """A head's spec: its own options, then the generic ones it lacks."""
  names = {o.name for o in own}
  generic = tuple(o for o in GENERIC if o.name not in names)
  return Spec(name=name, target=f"cfal.heads.{target}", options=own + generic,
              summary=summary)


HEADS: dict[str, Spec] = {spec.name: spec for spec in (
    _spec("softmax", "softmax:Softmax",
          "Linear classifier with softmax cross-entropy.", USE_BIAS),
    _spec("focal", "focal:Focal",
          "Linear classifier with the focal loss (Lin et al. 2017).",
          GAMMA, BETA, USE_BIAS),
    _spec("arcface", "arcface:ArcFace",
          "Additive angular margin (Deng et al. 2019).",
          SCALE, _MARGINS["arcface"], MARGIN_COUNTS_POWER,
          MARGIN_FLOOR_RATIO),
    _spec("subcenter_arcface", "subcenter_arcface:SubCenterArcFace",
          "ArcFace on the nearest of K sub-centers per class (Deng et al. "
          "2020).", SCALE, _MARGINS["arcface"], NUM_SUBCENTERS,
          MARGIN_COUNTS_POWER, MARGIN_FLOOR_RATIO),
    _spec("cosface", "cosface:CosFace",
          "Additive cosine margin (Wang et al. 2018).",
          SCALE, _MARGINS["cosface"], MARGIN_COUNTS_POWER,
          MARGIN_FLOOR_RATIO),
    _spec("sphereface", "sphereface:SphereFace",
          "Multiplicative angular margin (Liu et al. 2017).",
          SCALE, _MARGINS["sphereface"]),
    _spec("combined_margin", "combined_margin:CombinedMargin",
          "cos(m1 theta + m2) - m3 on normalised logits (insightface).",
          M1, M2, M3, SCALE, MARGIN_COUNTS_POWER, MARGIN_FLOOR_RATIO),
    _spec("center_loss", "center_loss:CenterLoss",
          "Softmax plus a pull to class centers (Wen et al. 2016).",
          Option("alpha", "float", "Center-loss learning rate of the "
                 "centers' update rule.", low=0.0, high=1.0),
          Option("center_weight", "float", "Weight of the center-loss "
                 "term.", low=0.0),
          Option("center_update", "str", "How the centers move: by the "
                 "paper's alpha rule or as trainable weights.",
                 choices=("alpha", "gradient"))),
    _spec("affinity", "affinity:Affinity",
          "Max-margin Gaussian affinity loss (Hayat et al. 2019).",
          NUM_CENTERS, SIGMA, _MARGINS["affinity"], SPREAD_WEIGHT),
    _spec("cfal", "cfal:CFAL",
          "Center-focused affinity loss (Mahbub et al. 2024).",
          NUM_CENTERS, SIGMA, _MARGINS["cfal"], GAMMA, BETA, SPREAD_WEIGHT),
    _spec("ldam", "ldam:LDAM",
          "Cosine logits with margins C / n_j^(1/4) (Cao et al. 2019).",
          SCALE, MAX_MARGIN),
    _spec("logit_adjusted", "logit_adjusted:LogitAdjusted",
          "Linear classifier trained on logits + tau log(class prior) "
          "(Menon et al. 2021).", TAU, USE_BIAS),
    _spec("balanced_softmax", "balanced_softmax:BalancedSoftmax",
          "Linear classifier trained on logits + log(class prior) (Ren et "
          "al. 2020).", USE_BIAS),
)}


# Heads whose `class_weighting=auto` means effective-number class weights
# from the training counts: their constructors take `class_counts` for
# their own weighting (`cfal.heads.factory`; a test checks the two agree).
WEIGHTED_BY_DEFAULT: tuple[str, ...] = ("focal", "cfal")


def class_weighting(name: str, options: Mapping[str, Any]) -> str | None:
  """What makes head `name` with checked `options` weight its classes
  (once the class counts are known), as a user would spell it, or None
  if it does not: "--class_weights", "--class_weighting=effective_number"
  or "--class_weighting=auto, its default"."""
  if options.get("class_weights") is not None:
    return "--class_weights"
  weighting = options.get("class_weighting", "auto")
  if weighting == "effective_number":
    return "--class_weighting=effective_number"
  if weighting == "auto" and name in WEIGHTED_BY_DEFAULT:
    return "--class_weighting=auto, its default"
  return None


# What each head's scores are, for the post-hoc corrections eval.py offers
# (`cfal.heads.posthoc`). Scores that are logits (a softmax of them is the
# head's class posterior) may be shifted by the log class priors (Menon et
# al. 2021): the linear heads and the normalised-logit heads (s cos theta).
# Affinity and CFAL score by Gaussian similarities in (0, 1], not logits.
LOGIT_SCORES: frozenset[str] = frozenset({
    "softmax", "focal", "logit_adjusted", "balanced_softmax", "center_loss",
    "arcface", "cosface", "sphereface", "combined_margin", "ldam",
    "subcenter_arcface"})
# Heads that score with a linear classifier `x . w_j + b_j` whose weight
# rows may be re-normalised (Kang et al. 2020's tau-normalisation). The
# cosine heads' weights are unit vectors already.
LINEAR_CLASSIFIERS: frozenset[str] = frozenset({
    "softmax", "focal", "logit_adjusted", "balanced_softmax",
    "center_loss"})


# Defaults changed after cfal had recorded runs: head -> option -> (what a
# config.json without the option ran with, the default now). The first is
# the default from before cfal recorded the option and never changes; the
# second must equal the head class's own default, and is what a later
# change of the default edits. Every new run's config (`ModelConfig`)
# records the default now, and a config.json without the option is read
# with the first value (`cfal.training.config.TrainConfig.from_json`), so a
# run resumed or evaluated after a change keeps the value it was trained
# with. Only these options are recorded when not given: a default changed
# without an entry here would silently change resumed runs.
CHANGED_DEFAULTS: dict[str, dict[str, tuple[Any, Any]]] = {
    # RESULTS.md, experiment 5: sigma 30 moves CFAL's prototypes to their
    # classes (130 is the CFAL authors' value; Affinity keeps it).
    "cfal": {"sigma": (130.0, 30.0)},
}


def recorded_defaults(name: str) -> dict[str, Any]:
  """The defaults of head `name` that a run's config.json records even
  when not given (see `CHANGED_DEFAULTS`)."""
  return {k: now for k, (_, now) in CHANGED_DEFAULTS.get(name, {}).items()}


def former_defaults(name: str) -> dict[str, Any]:
  """What a config.json of head `name` without these options ran with."""
  return {k: was for k, (was, _) in CHANGED_DEFAULTS.get(name, {}).items()}


def head_spec(name: str) -> Spec:
  """The spec of head `name`.

  Raises:
    ValueError: "Unknown --head='nope'; choose one of affinity, arcface,
      ...".
  """
  spec = HEADS.get(name)
  if spec is None:
    raise ValueError(f"Unknown --head={name!r}; choose one of "
                     f"{', '.join(sorted(HEADS))}.")
  return spec


def check_head_options(name: str, values: Mapping[str, Any]) -> dict:
  """`values` checked against head `name`'s declarations and converted.

  Args:
    name: a registry name (`HEADS`).
    values: option name -> value (command-line strings are parsed).

  Returns:
    The values converted to their declared types.

  Raises:
    ValueError: one line, for an unknown head (listing the valid names),
      an option the head does not take, or a value out of range, e.g.
      "--head=cfal: `sigma` (0) must be in (0, inf]."
  """
  return head_spec(name).check(values, kind="head")
