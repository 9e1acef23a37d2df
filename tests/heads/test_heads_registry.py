"""The heads' registry (no TensorFlow) and `build_head` (options -> parts).

The messages asserted here are the ones train.py prints after "train.py: ",
so they are checked whole.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import cfal.heads as heads
from cfal.heads import (ClassWeights, FocalModulation, PrototypeSpread,
                        build_head, registry)

ROOT = pathlib.Path(__file__).resolve().parents[2]
C, D = 5, 8
COUNTS = [400, 120, 40, 12, 1]
NAMES = ", ".join(sorted(registry.HEADS))


def test_registry_imports_no_tensorflow():
  code = ("import sys\n"
          "import cfal.heads.registry as r\n"
          "import cfal.heads\n"
          "r.check_head_options('cfal', {'sigma': '4', 'gamma': 1})\n"
          "assert sorted(r.HEADS) == sorted(cfal.heads.registry.HEADS)\n"
          "bad = sorted(m for m in sys.modules\n"
          "             if m.split('.')[0] in ('tensorflow', 'keras'))\n"
          "print(bad)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, check=True)
  assert result.stdout.strip() == "[]", result.stdout


def test_every_spec_names_its_head_class():
  assert {"softmax", "focal", "arcface", "cosface", "sphereface",
          "combined_margin", "center_loss", "affinity", "cfal"} <= set(
              registry.HEADS)
  for name, spec in registry.HEADS.items():
    assert spec.name == name and spec.summary
    assert spec.target.startswith("cfal.heads.")
    assert heads.HEADS[name] is spec.load()
    # Exported under its class name, so registering a head exports it.
    assert getattr(heads, spec.target.partition(":")[2]) is spec.load()


def test_a_shared_name_has_one_type_and_meaning():
  """Every option name is one Option object across heads; only `margin`
  (each head's own margin) varies, and then only in range and wording."""
  seen: dict[str, object] = {}
  for spec in registry.HEADS.values():
    assert len(set(spec.option_names)) == len(spec.options), spec.name
    for option in spec.options:
      first = seen.setdefault(option.name, option)
      if option.name == "margin":
        assert option.type == first.type == "float"
      else:
        assert option is first, (spec.name, option.name)


def test_generic_options():
  for spec in registry.HEADS.values():
    for name in registry.GENERIC_NAMES:
      assert spec.option(name) is not None, (spec.name, name)
  assert registry.CLASS_WEIGHTING.choices == ("auto", "none",
                                              "effective_number")
  assert registry.CLASS_WEIGHTS.type == "floats"


@pytest.mark.parametrize("name, values, message", [
    ("nope", {}, f"Unknown --head='nope'; choose one of {NAMES}."),
    ("arcface", {"margin": 3.2}, "--head=arcface: ArcFace `margin` (3.2) is "
     "an angle in radians and must be in [0, pi); 0.5 is the paper's "
     "value."),
    ("cfal", {"sigma": 0}, "--head=cfal: `sigma` (0) must be in (0, inf]."),
    ("cfal", {"beta": 1}, "--head=cfal: `beta` (1) must be in [0, 1)."),
    ("cfal", {"beta": "1"}, "--head=cfal: `beta` (1) must be in [0, 1)."),
    ("cosface", {"margin": "2.5"}, "--head=cosface: CosFace `margin` (2.5) "
     "is subtracted from a cosine and must be in [0, 2]; 0.35 is the "
     "paper's."),
    ("softmax", {"class_weighting": "inverse"}, "--head=softmax: "
     "`class_weighting` ('inverse') must be one of auto, none, "
     "effective_number."),
    ("softmax", {"class_weights": "1,-2"}, "--head=softmax: "
     "`class_weights` (-2) must be in [0, inf]."),
    ("arcface", {"sigma": 3}, "--head=arcface takes no sigma; it takes "
     "scale, margin, margin_counts_power, margin_floor_ratio, "
     "class_weighting, class_weights, beta, gamma, spread_weight."),
])
def test_check_head_options_messages(name, values, message):
  with pytest.raises(ValueError) as error:
    registry.check_head_options(name, values)
  assert str(error.value) == message


def test_check_head_options_converts():
  assert registry.check_head_options("cfal", {
      "sigma": "4", "num_centers": "3", "class_weights": "1,2.5"}) == {
          "sigma": 4.0, "num_centers": 3, "class_weights": [1.0, 2.5]}


# ---------------------------------------------------------------------------
# build_head


def _loss(head, seed=0):
  rng = np.random.default_rng(seed)
  x = tf.constant(rng.normal(size=(10, D)).astype(np.float32))
  y = tf.constant(np.arange(10) % C, tf.int32)
  return head.loss(x, y).numpy()


def _same(a, b):
  b.prototypes.assign(a.prototypes)
  np.testing.assert_array_equal(_loss(a), _loss(b))


@pytest.mark.parametrize("name", sorted(registry.HEADS))
def test_build_head_defaults_equal_the_constructor(name):
  """No options: the head's own defaults (Focal and CFAL class-balanced
  from the counts, as "auto" says; the long-tail heads' priors and
  margins from the counts)."""
  built = build_head(name, num_classes=C, embedding_dim=D,
                     class_counts=COUNTS, seed=1)
  cls = heads.HEADS[name]
  kwargs = {"class_counts": COUNTS} if name in (
      "focal", "cfal", "logit_adjusted", "balanced_softmax", "ldam") else {}
  _same(built, cls(num_classes=C, embedding_dim=D, seed=1, **kwargs))
  assert built.config() == cls(num_classes=C, embedding_dim=D, seed=1,
                               **kwargs).config()


def test_build_head_maps_generic_options_to_parts():
  built = build_head("arcface", num_classes=C, embedding_dim=D,
                     class_counts=COUNTS, seed=2, scale="16",
                     class_weighting="effective_number", beta="0.99",
                     gamma="2", spread_weight="0.5")
  direct = heads.ArcFace(
      num_classes=C, embedding_dim=D, seed=2, scale=16.0,
      class_weights=ClassWeights.effective_number(COUNTS, 0.99),
      focal=FocalModulation(2.0), regularizers=[PrototypeSpread(0.5)])
  _same(built, direct)
  assert built.focal.back_propagate and built.config() == direct.config()


def test_build_head_affinity_focal_is_the_cfal_kind():
  built = build_head("affinity", num_classes=C, embedding_dim=D, seed=3,
                     class_counts=COUNTS, gamma=2.0,
                     class_weighting="effective_number", beta=0.999)
  assert not built.focal.back_propagate
  # Affinity's default sigma (130) is not CFAL's (30): pass it.
  _same(built, heads.CFAL(num_classes=C, embedding_dim=D, seed=3,
                          class_counts=COUNTS, beta=0.999, sigma=130.0))


def test_build_head_class_weighting_none_and_explicit():
  cfal_none = build_head("cfal", num_classes=C, embedding_dim=D, seed=4,
                         class_counts=COUNTS, class_weighting="none")
  assert cfal_none.class_weights is None
  _same(cfal_none, heads.CFAL(num_classes=C, embedding_dim=D, seed=4))
  weights = [1.0, 2.0, 3.0, 4.0, 5.0]
  for name in ("softmax", "focal", "cfal", "center_loss"):
    built = build_head(name, num_classes=C, embedding_dim=D, seed=4,
                       class_counts=COUNTS, class_weights=weights)
    np.testing.assert_array_equal(built.class_weights.values, weights)


def test_build_head_own_options_pass_through():
  head = build_head("center_loss", num_classes=C, embedding_dim=D,
                    center_update="gradient", alpha="0.3", spread_weight=1)
  assert head.center_update == "gradient" and head.alpha == 0.3
  assert isinstance(head.regularizers[0], PrototypeSpread)
  head = build_head("cfal", num_classes=C, embedding_dim=D, num_centers=2,
                    gamma=0, spread_weight=0)
  assert head.prototypes.shape == (C, 2, D)
  assert head.focal.gamma == 0 and head.regularizers == ()


@pytest.mark.parametrize("name, options, counts, message", [
    ("softmax", {"class_weighting": "effective_number"}, None,
     "--head=softmax: class_weighting=effective_number needs the class "
     "counts of the training data."),
    ("cfal", {"class_weighting": "effective_number"}, None,
     "--head=cfal: class_weighting=effective_number needs the class counts "
     "of the training data."),
    ("softmax", {"class_weights": [1, 2, 3]}, COUNTS,
     "--head=softmax: `class_weights` has 3 entries but `num_classes` is "
     "5."),
    ("focal", {"class_weights": [1, 2, 3]}, COUNTS,
     "--head=focal: `class_weights` has 3 entries but `num_classes` is 5."),
    ("cfal", {}, [3, 2, 1],
     "--head=cfal: `class_counts` has 3 entries but `num_classes` is 5."),
    ("arcface", {"class_weighting": "effective_number"}, [3, 0, 1, 1, 1],
     "--head=arcface: `class_counts` must be >= 1 for every class, got min "
     "0.0: drop empty classes or pass no counts."),
    ("arcface", {"class_weighting": "none", "class_weights": [1] * 5},
     COUNTS, "--head=arcface: `class_weights` are explicit per-class "
     "weights; they contradict class_weighting=none."),
    ("arcface", {"beta": 0.99}, COUNTS,
     "--head=arcface: `beta` (0.99) sets effective-number class weights, "
     "which this head does not use here; add "
     "class_weighting=effective_number (with class counts) or drop it."),
    ("cfal", {"beta": 0.99, "class_weighting": "none"}, COUNTS,
     "--head=cfal: `beta` (0.99) sets effective-number class weights, which "
     "this head does not use here; add class_weighting=effective_number "
     "(with class counts) or drop it."),
    ("center_loss", {"spread_weight": 1.0}, None,
     "--head=center_loss: Regularizers on center-loss centers need "
     "`center_update` 'gradient'; the 'alpha' rule never applies their "
     "gradient."),
    ("arcface", {"margin": 3.2}, None, "--head=arcface: ArcFace `margin` "
     "(3.2) is an angle in radians and must be in [0, pi); 0.5 is the "
     "paper's value."),
    ("nope", {}, None, f"Unknown --head='nope'; choose one of {NAMES}."),
])
def test_build_head_refuses_bad_combinations(name, options, counts, message):
  with pytest.raises(ValueError) as error:
    build_head(name, num_classes=C, embedding_dim=D, class_counts=counts,
               **options)
  assert str(error.value) == message


@pytest.mark.parametrize("name", sorted(registry.HEADS))
@pytest.mark.parametrize("options", [
    {}, {"class_weighting": "auto"}, {"class_weighting": "none"},
    {"class_weighting": "effective_number"}, {"class_weights": [1.0] * C},
], ids=["unset", "auto", "none", "effective_number", "explicit"])
def test_registry_knows_which_options_weight_classes(name, options):
  # What train.py tells before TensorFlow (deferred re-weighting refuses a
  # head that weights its classes) is what the built head does.
  said = registry.class_weighting(name, registry.check_head_options(
      name, options))
  built = build_head(name, num_classes=C, embedding_dim=D,
                     class_counts=COUNTS, seed=0, **options)
  assert (said is not None) == (built.class_weights is not None), said
