"""Time to 90% test accuracy on Fashion-MNIST: cfal's recipe against Keras fit.

Two runs train in one process, taking turns a quarter of an epoch at a
time (so a noisy neighbour slows both alike), each checked on the test
set after every quarter. cfal's run stops at 90% or after 175 s of
training; once it has reached 90% in T seconds, Keras trains on until it
reaches 90% or has trained 1.5 T, so the 1.5x target is decided either
way (a run stops after the quarter that passes its limit):

- cfal's default recipe, what `python train.py` does with its defaults:
  seed_cnn (embedding 64) + CFAL head, batch 128, Adam 1e-3 with cosine
  decay over 2 epochs, 50 steps per compiled call, built by
  `cfal.training.build` and driven through `cfal.training.steps.Steps` as
  `cfal.training.runner` drives it, checked by its `Evaluator`;
- the seed notebook's setup: the same conv stack in plain Keras layers,
  then Dense(10, softmax), sparse categorical cross-entropy, batch 32, Adam
  with its default learning rate, default `compile`, trained with `fit`;
- with `--variants`, a third: a cfal variant that could get there
  sooner, learning rate 2e-3 after a 50-step warmup. It stops once it has
  trained as long as the default needed (after that it cannot be sooner)
  or 120 s. It adds about 2.5 minutes, which the 8-minute budget of the
  full run does not hold, so it is off by default.

Variants that leave the optimisation unchanged (bfloat16, steps per call)
or change it in a way unlikely to help (batch 256: half the updates per
epoch) are compared by training throughput, measured round-robin with
`bench.common.interleaved`, next to Keras `fit` at batch 32 and 128; at
the same batch size their time to accuracy is the default's at their
step time.

The clock counts training only. Checks pause it: a check first scores a
fixed random 1,000 of the 10,000 test images and scores all 10,000 only
when that comes within 2.5 points of the target (the screen's standard
error is ~1 point), so early checks stay cheap; the table marks
screened values with "~". Tracing is excluded: cfal's compiled loop is
traced by a zero-step call before the clock starts; Keras traces inside
its first batch, whose excess over the median batch is subtracted (each
Keras chunk is one `fit` call, whose fixed cost of 0.1-0.4 s is counted). All
train on the same 54,000 images (the training split minus cfal's
validation tenth).

    .venv/bin/python bench/time_to_accuracy.py             # ~9 min, idle
    .venv/bin/python bench/time_to_accuracy.py --variants  # + the lr variant
    .venv/bin/python bench/time_to_accuracy.py --quick     # smoke test, 75%
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import sys
import time
from typing import Callable, Protocol

STARTED = time.perf_counter()   # the budget counts imports too
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from cfal import cli  # noqa: E402  (before TensorFlow: its oneDNN setting)
cli.prepare_environment()
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import (build_trainer, evaluator,  # noqa: E402
                          finish, interleaved, markdown_table, median)
from cfal.data import datasets, load_fashion_mnist, pipeline  # noqa: E402
from cfal.training.config import (OptimizerConfig, RunConfig,  # noqa: E402
                                  TrainConfig, dtype_policy)
from cfal.training.strategy import slow_bfloat16_note  # noqa: E402

EVAL_BATCH = 500
TARGET_RATIO = 1.5     # cfal's default must reach the target this much sooner
SCREEN_SIZE = 1000
SCREEN_MARGIN = 0.025


@dataclasses.dataclass(frozen=True)
class Variant:
  """A cfal configuration: the default recipe with some fields changed."""

  name: str
  batch_size: int = 128
  precision: str = "float32"
  steps_per_loop: int = 50
  learning_rate: float = 1e-3
  warmup_steps: int = 0

  def config(self) -> TrainConfig:
    return TrainConfig(
        optimizer=OptimizerConfig(learning_rate=self.learning_rate,
                                  warmup_steps=self.warmup_steps),
        run=RunConfig(batch_size=self.batch_size,
                      steps_per_loop=self.steps_per_loop,
                      mixed_precision=self.precision))


DEFAULT = Variant("cfal default")
RACE_VARIANT = Variant("cfal lr 2e-3, warmup 50", learning_rate=2e-3,
                       warmup_steps=50)
SPEED_VARIANTS = (
    DEFAULT,
    Variant("cfal 1 step per call", steps_per_loop=1),
    Variant("cfal batch 256", batch_size=256),
    Variant("cfal bfloat16", precision="bfloat16"),
)
# bfloat16 training steps are ~10x slower on these CPUs (measured while
# writing this): time a quarter as many of them.
FEWER_STEPS = {"bfloat16": 4}


@dataclasses.dataclass
class Check:
  """One check: where training was and what the test images said."""

  epoch: float
  train_seconds: float
  accuracy: float
  full: bool   # all 10,000 test images, else the SCREEN_SIZE screen


@dataclasses.dataclass
class Outcome:
  """A side's whole run."""

  name: str
  checks: list[Check]
  trace_seconds: float
  reached_seconds: float | None
  reached_epoch: float | None
  stopped: str


class Side(Protocol):
  """A model trained a chunk at a time and scored in between."""

  name: str
  trace_seconds: float
  epoch: float

  def train_chunk(self) -> float:
    """Trains one chunk; returns its training seconds (tracing excluded)."""

  def accuracy(self, indices: np.ndarray) -> float:
    """Accuracy on these test images."""


class CfalSide:
  """A cfal variant trained `1 / checks_per_epoch` of an epoch at a time."""

  def __init__(self, variant: Variant, data: datasets.DataBundle,
               checks_per_epoch: int):
    self.name = variant.name
    self.variant = variant
    self.data = data
    self.done_steps = 0
    with dtype_policy(variant.precision):
      self.trainer = build_trainer(variant.config(), data=data)
      self.per_epoch = self.trainer.built.per_epoch
      self.chunk = self.per_epoch // checks_per_epoch
      began = time.perf_counter()
      self.trainer.run_steps(0)   # trace only
      self.trace_seconds = time.perf_counter() - began
    self.evaluator = evaluator(self.trainer.built, self.trainer.steps.mode)

  @property
  def epoch(self) -> float:
    return self.done_steps / self.per_epoch

  def run_steps(self, count: int) -> float:
    """`count` steps in calls of `steps_per_loop`; seconds taken."""
    began = time.perf_counter()
    left = count
    while left > 0:
      n = min(self.variant.steps_per_loop, left)
      self.trainer.run_steps(n)
      left -= n
    self.done_steps += count
    return time.perf_counter() - began

  def train_chunk(self) -> float:
    return self.run_steps(self.chunk)

  def accuracy(self, indices: np.ndarray) -> float:
    result = self.evaluator.evaluate(pipeline.eval_dataset(
        self.data.test_source, indices, batch_size=EVAL_BATCH))
    return float(np.trace(result.confusion) / result.confusion.sum())


def keras_seed_model(input_shape: tuple[int, ...], num_classes: int,
                     embedding_dim: int = 64) -> keras.Model:
  """The seed notebook's network: seed_cnn's layers in plain Keras, then a
  softmax classifier."""
  layers = keras.layers
  inputs = keras.Input(shape=input_shape)
  x = inputs
  for filters in (32, 64):
    for _ in range(2):
      x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
      x = layers.BatchNormalization()(x)
      x = layers.ReLU()(x)
    x = layers.MaxPooling2D(2)(x)
  x = layers.Flatten()(x)
  x = layers.Dense(128)(x)
  x = layers.ReLU()(x)
  x = layers.BatchNormalization()(x)
  x = layers.Dense(embedding_dim)(x)
  outputs = layers.Dense(num_classes, activation="softmax")(x)
  return keras.Model(inputs, outputs)


class BatchTimer(keras.callbacks.Callback):
  """Records how long each of the first `keep` batches took."""

  def __init__(self, keep: int = 40):
    super().__init__()
    self.keep = keep
    self.times: list[float] = []
    self.began = 0.0

  def on_train_batch_begin(self, batch, logs=None):
    self.began = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    if len(self.times) < self.keep:
      self.times.append(time.perf_counter() - self.began)


class KerasSide:
  """The seed notebook's model trained with `fit`, a chunk per call.

  Each epoch is one seeded permutation of the training images, cut into
  chunks fed to `fit(..., shuffle=False)`: the batches an epoch of
  `fit(shuffle=True)` would draw.
  """

  name = "Keras fit (seed notebook)"

  def __init__(self, data: datasets.DataBundle, checks_per_epoch: int,
               batch_size: int = 32):
    keras.utils.set_random_seed(0)
    x, y = load_fashion_mnist("train")
    self.train_x = x[data.train_indices][..., None]
    self.train_y = y[data.train_indices]
    test_x, self.test_y = load_fashion_mnist("test")
    self.test_x = test_x[..., None].astype(np.float32) / 255.0
    self.batch_size = batch_size
    self.model = keras_seed_model(self.train_x.shape[1:], data.num_classes)
    self.model.compile(optimizer="adam",
                       loss="sparse_categorical_crossentropy",
                       metrics=["accuracy"])
    self.chunk = math.ceil(len(self.train_y) / checks_per_epoch)
    self.rng = np.random.default_rng(0)
    self.order = np.zeros(0, np.int64)
    self.position = 0
    self.done = 0
    self.trace_seconds = 0.0

  @property
  def epoch(self) -> float:
    return self.done / len(self.train_y)

  def _next_chunk(self) -> tuple[np.ndarray, np.ndarray]:
    if self.position >= len(self.order):
      self.order = self.rng.permutation(len(self.train_y))
      self.position = 0
    take = self.order[self.position:self.position + self.chunk]
    self.position += len(take)
    return (self.train_x[take].astype(np.float32) / 255.0,
            self.train_y[take])

  def train_chunk(self) -> float:
    x, y = self._next_chunk()
    first = self.done == 0
    timer = BatchTimer()
    began = time.perf_counter()
    self.model.fit(x, y, batch_size=self.batch_size, epochs=1, shuffle=False,
                   verbose=0, callbacks=[timer] if first else None)
    seconds = time.perf_counter() - began
    self.done += len(y)
    if first:   # the train function was traced inside the first batch
      self.trace_seconds = max(0.0, timer.times[0] - median(timer.times[1:]))
      seconds -= self.trace_seconds
    return seconds

  def fit_steps(self, steps: int) -> None:
    """`steps` batches through `fit` (for the throughput table)."""
    x = self.train_x[:steps * self.batch_size].astype(np.float32) / 255.0
    self.model.fit(x, self.train_y[:len(x)], batch_size=self.batch_size,
                   epochs=1, shuffle=False, verbose=0)

  def accuracy(self, indices: np.ndarray) -> float:
    probabilities = self.model.predict(self.test_x[indices],
                                       batch_size=EVAL_BATCH, verbose=0)
    return float(np.mean(np.argmax(probabilities, -1)
                         == self.test_y[indices]))


# A side's training-time cap, given the outcomes finished so far.
Limit = Callable[[str, dict[str, Outcome]], float]


def race(sides: list[Side], *, target: float, limit: Limit,
         screen: np.ndarray, everything: np.ndarray,
         echo: Callable[[str], None] = print) -> list[Outcome]:
  """Trains the sides in turns of one chunk until each reaches `target`
  test accuracy or its training time reaches `limit` (the last chunk may
  pass it: a limit is where a side stops, so a verdict at the limit is
  decided)."""
  clocks = {side.name: 0.0 for side in sides}
  checks: dict[str, list[Check]] = {side.name: [] for side in sides}
  finished: dict[str, Outcome] = {}
  while len(finished) < len(sides):
    for side in sides:
      name = side.name
      if name in finished:
        continue
      chunk = side.train_chunk()
      clocks[name] += chunk
      check = score(side, clocks[name], target, screen, everything)
      checks[name].append(check)
      echo(f"  {name}: epoch {check.epoch:.2f}  {check.train_seconds:6.1f} s"
           f"  {'test' if check.full else 'screen'} accuracy "
           f"{check.accuracy:.4f}")
      if check.full and check.accuracy >= target:
        finished[name] = Outcome(name, checks[name], side.trace_seconds,
                                 clocks[name], side.epoch, "reached")
      elif clocks[name] >= limit(name, finished):
        finished[name] = Outcome(name, checks[name], side.trace_seconds,
                                 None, None,
                                 f"not reached in {clocks[name]:.0f} s")
  return [finished[side.name] for side in sides]


def score(side: Side, seconds: float, target: float, screen: np.ndarray,
          everything: np.ndarray) -> Check:
  """The screen first; all test images once the screen is near target."""
  accuracy = side.accuracy(screen)
  if accuracy < target - SCREEN_MARGIN:
    return Check(side.epoch, seconds, accuracy, full=False)
  return Check(side.epoch, seconds, side.accuracy(everything), full=True)


def race_limit(cap: float, variant_cap: float) -> Limit:
  """`cap` for cfal default. Keras trains to `TARGET_RATIO` times the
  default's time to target, where the verdict is decided either way; while
  the default still trains, to `TARGET_RATIO` times its cap; once the
  default has stopped short of the target, not at all (cfal missed). A
  variant stops at `variant_cap` or at the default's time to target, past
  which it cannot be sooner."""
  def limit(name: str, finished: dict[str, Outcome]) -> float:
    default = finished.get(DEFAULT.name)
    reached = default.reached_seconds if default else None
    if name == DEFAULT.name:
      return cap
    if name == KerasSide.name:
      if default is None:
        return TARGET_RATIO * cap
      return 0.0 if reached is None else TARGET_RATIO * reached
    if reached is None:
      return variant_cap
    return min(variant_cap, reached)
  return limit


def speed_table(variants: tuple[Variant, ...], keras_batches: tuple[int, ...],
                data: datasets.DataBundle, *, steps: int,
                repeats: int) -> dict[str, dict]:
  """Seconds per training step of each cfal variant and of Keras `fit` at
  the given batch sizes, round-robin, medians."""
  runs: dict[str, Callable[[], object]] = {}
  info: dict[str, dict] = {}
  for variant in variants:
    side = CfalSide(variant, data, checks_per_epoch=1)
    n = max(1, steps // FEWER_STEPS.get(variant.precision, 1))
    runs[variant.name] = lambda side=side, n=n: side.run_steps(n)
    info[variant.name] = {"steps": n, "batch_size": variant.batch_size,
                          "trace_seconds": side.trace_seconds}
  for batch in keras_batches:
    keras_side = KerasSide(data, checks_per_epoch=1, batch_size=batch)
    # As many examples per call as cfal's default takes.
    n = max(1, steps * DEFAULT.batch_size // batch)
    name = f"Keras fit, batch {batch}"
    runs[name] = lambda k=keras_side, n=n: k.fit_steps(n)
    info[name] = {"steps": n, "batch_size": batch, "trace_seconds": None}
  times = interleaved(runs, repeats=repeats)
  for name, entry in info.items():
    entry["seconds_per_step"] = median(times[name]) / entry["steps"]
    entry["runs"] = times[name]
  return info


def outcome_rows(outcomes: list[Outcome]) -> list[list[str]]:
  reference = outcomes[0].reached_seconds
  rows = []
  for o in outcomes:
    full = [c for c in o.checks if c.full] or o.checks
    best = max(full, key=lambda c: c.accuracy)
    best_text = (f"{'' if best.full else '~'}{best.accuracy:.4f} at epoch "
                 f"{best.epoch:.2f}")
    if o.reached_seconds is None:
      rows.append([o.name, o.stopped, "-", "-", best_text,
                   f"{o.trace_seconds:.1f} s"])
      continue
    ratio = f"{o.reached_seconds / reference:.2f}x" if reference else "-"
    rows.append([o.name, f"{o.reached_seconds:.0f} s",
                 f"{o.reached_epoch:.2f}", ratio, best_text,
                 f"{o.trace_seconds:.1f} s"])
  return rows


def trajectory_rows(outcomes: list[Outcome]) -> list[list[str]]:
  """One row per check index: each side's epoch, seconds and accuracy."""
  rows = []
  for i in range(max(len(o.checks) for o in outcomes)):
    row = [str(i + 1)]
    for o in outcomes:
      if i < len(o.checks):
        c = o.checks[i]
        row.append(f"{c.epoch:.2f} ep, {c.train_seconds:.0f} s: "
                   f"{'' if c.full else '~'}{c.accuracy:.3f}")
      else:
        row.append("")
    rows.append(row)
  return rows


def speed_rows(speeds: dict[str, dict],
               default: Outcome) -> list[list[str]]:
  base = speeds[DEFAULT.name]["seconds_per_step"] / DEFAULT.batch_size
  rows = []
  for name, s in speeds.items():
    per_example = s["seconds_per_step"] / s["batch_size"]
    estimate = "-"
    if (default.reached_seconds and s["batch_size"] == DEFAULT.batch_size
        and name.startswith("cfal")):
      estimate = f"{default.reached_seconds * per_example / base:.0f} s"
    trace = s["trace_seconds"]
    rows.append([name, str(s["batch_size"]),
                 f"{s['seconds_per_step'] * 1000:.0f} ms",
                 f"{1 / per_example:.0f}", f"{base / per_example:.2f}x",
                 estimate, "-" if trace is None else f"{trace:.1f} s"])
  return rows


def describe(o: Outcome) -> str:
  if o.reached_seconds is None:
    return o.stopped
  return f"{o.reached_seconds:.0f} s (epoch {o.reached_epoch:.2f})"


def verdict(cfal: Outcome, fit: Outcome) -> str:
  """Whether cfal was >= 1.5x sooner; a capped run bounds its own time."""
  if cfal.reached_seconds is None:
    return "missed"
  if fit.reached_seconds is not None:
    return ("met" if fit.reached_seconds >= TARGET_RATIO * cfal.reached_seconds
            else "missed")
  trained = fit.checks[-1].train_seconds
  return ("met" if trained >= TARGET_RATIO * cfal.reached_seconds
          else "undecided")


def why(cfal: Outcome, fit: Outcome, speeds: dict[str, dict]) -> str:
  """Accuracy at the last check both made, and the examples/s ratio."""
  last = min(len(cfal.checks), len(fit.checks)) - 1
  a, b = cfal.checks[last], fit.checks[last]
  text = (f"At their last common check (epoch {a.epoch:.2f}) cfal had "
          f"{'' if a.full else '~'}{a.accuracy:.3f} and Keras fit "
          f"{'' if b.full else '~'}{b.accuracy:.3f}")
  keras32 = speeds.get("Keras fit, batch 32")
  if keras32 and DEFAULT.name in speeds:
    rate = (keras32["seconds_per_step"] / keras32["batch_size"]) / (
        speeds[DEFAULT.name]["seconds_per_step"] / DEFAULT.batch_size)
    text += (f"; cfal trains {rate:.2f}x the examples per second of "
             f"Keras fit at batch 32: with equal accuracy per epoch it "
             f"would be {rate:.1f}x sooner")
  return text + "."


def findings(outcomes: list[Outcome], speeds: dict[str, dict],
             target: float) -> list[str]:
  cfal, fit = outcomes[0], outcomes[1]
  ratio = ""
  if cfal.reached_seconds and fit.reached_seconds:
    ratio = f", {fit.reached_seconds / cfal.reached_seconds:.2f}x"
  found = [f"cfal default reaches {target:.0%} test accuracy >= "
           f"{TARGET_RATIO}x sooner "
           f"than Keras fit: {verdict(cfal, fit)}: cfal {describe(cfal)}, "
           f"Keras fit {describe(fit)}{ratio}. {why(cfal, fit, speeds)}"]
  for o in outcomes[2:]:
    found.append(f"{o.name}: {describe(o)} against the default's "
                 f"{describe(cfal)}.")
  if speeds:
    base = speeds[DEFAULT.name]["seconds_per_step"] / DEFAULT.batch_size
    parts = [f"{name} {base / (s['seconds_per_step'] / s['batch_size']):.2f}x"
             for name, s in speeds.items() if name != DEFAULT.name]
    found.append("Training throughput (examples/s) against the default: "
                 + "; ".join(parts) + ".")
  bf16 = speeds.get("cfal bfloat16")
  if bf16 and slow_bfloat16_note("bfloat16"):
    ratio = speeds[DEFAULT.name]["seconds_per_step"] / bf16["seconds_per_step"]
    found.append(f"bfloat16 cannot help here: this CPU lacks native bf16 "
                 f"instructions (no avx512_bf16, amx_bf16 or bf16 in "
                 f"/proc/cpuinfo), so oneDNN emulates it and the step runs at "
                 f"{ratio:.2f}x float32's speed; train.py warns when asked "
                 f"for it on such a CPU. On CPUs with AVX512-BF16 or AMX, or "
                 f"on GPUs, it is worth measuring again.")
  return found


@dataclasses.dataclass(frozen=True)
class Plan:
  """How big a run is."""

  target: float
  cap_seconds: float
  variant_cap_seconds: float
  checks_per_epoch: int
  race_variant: bool
  speed_variants: tuple[Variant, ...]
  keras_batches: tuple[int, ...]
  speed_steps: int
  speed_repeats: int


FULL = Plan(target=0.90, cap_seconds=175.0, variant_cap_seconds=120.0,
            checks_per_epoch=4, race_variant=False,
            speed_variants=SPEED_VARIANTS, keras_batches=(32, 128),
            speed_steps=8, speed_repeats=2)
QUICK = Plan(target=0.75, cap_seconds=30.0, variant_cap_seconds=0.0,
             checks_per_epoch=16, race_variant=False,
             speed_variants=SPEED_VARIANTS[:2], keras_batches=(32,),
             speed_steps=3, speed_repeats=1)


def make_tables(plan: Plan, outcomes: list[Outcome],
                speeds: dict[str, dict]) -> list[dict]:
  """The three tables for the console and `write_result`."""
  return [
      {"title": f"Time to {plan.target:.0%} Fashion-MNIST test accuracy",
       "markdown": markdown_table(
           ["configuration", f"time to {plan.target:.0%}", "epoch",
            "time vs cfal default", "best test accuracy", "tracing"],
           outcome_rows(outcomes)),
       "note": (f"Training seconds (checks and tracing excluded; tracing "
                f"shown apart), one run each, taking turns 1/"
                f"{plan.checks_per_epoch} epoch at a time. A run stops at "
                f"the target or after the quarter that takes it past its "
                f"cap: {plan.cap_seconds:.0f} s for cfal default, and for "
                f"Keras fit {TARGET_RATIO}x the default's time to target, "
                f"where the verdict is decided"
                + (f", the variant at the default's time to target or "
                   f"{plan.variant_cap_seconds:.0f} s"
                   if plan.race_variant else "")
                + f". '~': screened on {SCREEN_SIZE} test images only.")},
      {"title": "Test accuracy at each check",
       "markdown": markdown_table(
           ["check"] + [o.name for o in outcomes], trajectory_rows(outcomes),
           align="l" * (1 + len(outcomes))),
       "note": (f"'~': accuracy on the {SCREEN_SIZE}-image screen, more than "
                f"{SCREEN_MARGIN * 100:.1f} points below target; otherwise "
                f"all 10,000 test images.")},
      {"title": "Training throughput: cfal variants that keep the "
                "optimisation, batch 256, and Keras fit",
       "markdown": markdown_table(
           ["configuration", "batch", "step", "examples/s", "vs default",
            "time to target at this speed", "tracing"],
           speed_rows(speeds, outcomes[0])),
       "note": (f"Median of {plan.speed_repeats} round-robin calls after a "
                f"warm-up call; a call is {plan.speed_steps} cfal steps "
                f"(bfloat16: "
                f"{max(1, plan.speed_steps // FEWER_STEPS['bfloat16'])}) or "
                f"as many examples through one `fit` call (its fixed cost, "
                f"0.1-0.4 s measured, included). Time to target at this "
                f"speed: the default's, scaled by the step-time ratio (same "
                f"batch, so the same steps). Batch 256 makes half the "
                f"updates per epoch, so it typically needs more epochs: it "
                f"can only be sooner if it trains more examples per second. "
                f"Keras fit at batch 128, the notebook's model at cfal's "
                f"batch, separates the cost of the batch size from that of "
                f"cfal's step.")}]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: 75%% target, short caps, no variants")
  parser.add_argument("--variants", action="store_true",
                      help="also race cfal with lr 2e-3 after a warmup "
                           "(about 2.5 more minutes)")
  args = parser.parse_args()
  plan = QUICK if args.quick else FULL
  if args.variants:
    plan = dataclasses.replace(plan, race_variant=True)
  load_before = os.getloadavg()
  tf.get_logger().setLevel("ERROR")
  data = datasets.load_data(datasets.DataConfig(name="fashion_mnist"))
  everything = np.arange(len(data.test_source))
  screen = np.sort(np.random.default_rng(0).choice(everything, SCREEN_SIZE,
                                                   replace=False))

  print(f"Race to {plan.target:.0%} test accuracy, checks every "
        f"1/{plan.checks_per_epoch} epoch:", flush=True)
  sides: list[Side] = [CfalSide(DEFAULT, data, plan.checks_per_epoch),
                       KerasSide(data, plan.checks_per_epoch)]
  if plan.race_variant:
    sides.append(CfalSide(RACE_VARIANT, data, plan.checks_per_epoch))
  outcomes = race(sides, target=plan.target,
                  limit=race_limit(plan.cap_seconds,
                                   plan.variant_cap_seconds),
                  screen=screen, everything=everything,
                  echo=lambda line: print(line, flush=True))
  print("Step throughput:", flush=True)
  speeds = speed_table(plan.speed_variants, plan.keras_batches, data,
                       steps=plan.speed_steps, repeats=plan.speed_repeats)
  seconds = time.perf_counter() - STARTED

  finish("time_to_accuracy",
         command=(".venv/bin/python bench/time_to_accuracy.py"
                  + (" --variants" if args.variants else "")),
         tables=make_tables(plan, outcomes, speeds),
         findings=findings(outcomes, speeds, plan.target),
         results={"plan": dataclasses.asdict(plan),
                  "outcomes": [dataclasses.asdict(o) for o in outcomes],
                  "speeds": speeds},
         seconds=seconds, load_before=load_before, save=not args.quick)


if __name__ == "__main__":
  main()
