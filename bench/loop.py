"""Train-step throughput: cfal's compiled loop against Keras `fit`, and FLOP/s.

Measures examples/second of one backbone + the default CFAL head (train.py's
default optimizer, Adam 1e-3 with cosine decay, batch 128, real Fashion-MNIST
batches from cfal's own input pipeline) for:

- cfal's `Steps` (cfal/training/steps.py) in step modes eager, function and
  xla, with 1, 10 and 50 steps per compiled call (`--steps_per_loop`),
  built by `cfal.training.build` exactly as train.py builds it;
- Keras `model.fit` with the head as a Keras layer fed [embedding, label]
  that returns the per-example loss, trained through an identity loss (the
  seed notebooks' way; the same backbone, head and optimizer from
  `cfal.training.build`'s functions): default `compile` at batch 128, and every
  `jit_compile` x `steps_per_execution` in {False, True} x {1, 10, 50}
  (the best is "best-tuned Keras");
- the seeds' own setup: that model with default `compile`, fed NumPy arrays
  with fit's default batch size, 32 (and cfal's function loop at batch 32
  beside it, which tells the batch size's share from the framework's);
- a large float32 square matmul three ways: TensorFlow's kernel in a
  `tf.function`, the same jit-compiled by XLA, and NumPy's OpenBLAS; the
  fastest is the machine's FLOP/s ceiling.

Backbones: seed_cnn (the default, 64-d embedding) and a small ResNet (see
RESNET_OPTIONS). Train-step FLOPs are counted analytically from the conv and
dense layers' shapes (forward 2*MACs, train step = 3x forward), giving the
achieved fraction of the matmul FLOP/s.

Every configuration of a backbone and the matmuls run round-robin
(`bench.common.interleaved`) after an untimed warm-up call that traces and
compiles (its excess over a timed call is the "trace s" column); figures are
medians over repeats, and every verdict is a ratio of two configurations
measured side by side. A ratio is marked "within noise" unless every sample
of one configuration beat every sample of the other; the recommendations
for `--step_mode=auto` and `--steps_per_loop` change a default only past
that bar.

    .venv/bin/python bench/loop.py            # full run, ~7 min on 2 idle cores
    .venv/bin/python bench/loop.py --quick    # smoke run, ~1.5 min, no file
    .venv/bin/python bench/loop.py --backbones seed_cnn --repeats 5
    .venv/bin/python bench/loop.py --report_only   # re-render saved rows

Prints markdown tables and writes bench/results/loop.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Callable, Sequence

STARTED = time.perf_counter()   # the budget counts imports and tracing too
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# pylint: disable=wrong-import-position
from cfal import cli  # noqa: E402  (before TensorFlow: its oneDNN setting)
cli.prepare_environment()
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cfal.heads  # noqa: E402
from bench import common  # noqa: E402
from cfal.data import datasets, pipeline  # noqa: E402
from cfal.training import build as build_lib  # noqa: E402
from cfal.training.config import (ModelConfig, RunConfig,  # noqa: E402
                                  TrainConfig)
from cfal.training.steps import Steps  # noqa: E402

BATCH = 128                 # train.py's default
SEEDS_BATCH = 32            # `fit`'s default batch size, what the seeds used
# The ResNet builder's smallest layout for 28x28 input: the CIFAR stem
# (3x3 stride 1, no pooling), one stage of one basic block, 16 channels.
# The default ResNet-18 costs ~350 GFLOP per 28x28 train step of 128,
# several seconds on 2 cores: 50-step calls would not fit the budget.
RESNET_OPTIONS = {"depth_per_stage": (1,), "width": 16}
TARGET_VS_KERAS = 1.0
TARGET_VS_SEEDS = 1.2
TARGET_FLOP_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Plan:
  """How much work each measurement does.

  Attributes:
    repeats: timed samples per configuration (the median is reported).
    loops: steps per compiled call (cfal) / `steps_per_execution` (Keras).
    min_steps: a timed sample runs at least this many steps (several calls
      when the call is shorter).
    eager_steps: steps per timed sample in eager mode.
    seeds_steps: steps per timed sample at batch 32 (the seeds' setup; cfal
      rounds up to whole calls).
    matmul_size: side of the square float32 matmul.
    backbones: backbone names to measure.
  """

  repeats: int
  loops: tuple[int, ...]
  min_steps: int
  eager_steps: int
  seeds_steps: int
  matmul_size: int
  backbones: tuple[str, ...]


FULL = Plan(repeats=3, loops=(1, 10, 50), min_steps=2, eager_steps=1,
            seeds_steps=16, matmul_size=2048, backbones=("seed_cnn", "resnet"))
QUICK = Plan(repeats=1, loops=(1, 5), min_steps=2, eager_steps=1,
             seeds_steps=8, matmul_size=2048, backbones=("seed_cnn",))


@dataclasses.dataclass
class Config:
  """One measured configuration: a timed sample and its untimed warm-up.

  `sample()` and `warm()` run `steps` and `warm_steps` train steps of
  `batch` examples; `losses` collects the loss each call reports.
  """

  backbone: str
  trainer: str      # "cfal", "keras" or "keras-seeds"
  mode: str         # step mode, or the Keras compile settings
  loop: int         # steps per compiled call / steps_per_execution
  batch: int
  steps: int
  warm_steps: int
  sample: Callable[[], None]
  warm: Callable[[], None]
  losses: list[float] = dataclasses.field(default_factory=list)
  check: Callable[[], bool] | None = None   # did the head's variables train?
  # Seconds of each sample's training proper, when the sample also does
  # set-up work a long run would amortise (Keras fit); else None.
  inner: list[float] | None = None
  flops: float = 0.0    # per sample, for the matmuls

  @property
  def label(self) -> str:
    return "/".join(str(part) for part in (
        self.backbone, self.trainer, self.mode, self.loop, self.batch))


# ---------------------------------------------------------------------------
# Models, built by cfal.training.build as train.py builds them.


def train_config(backbone: str, batch: int = BATCH,
                 mode: str = "auto") -> TrainConfig:
  """train.py's defaults with this backbone, batch and step mode."""
  return TrainConfig(
      model=ModelConfig(backbone=backbone, backbone_args=(
          RESNET_OPTIONS if backbone == "resnet" else {})),
      run=RunConfig(batch_size=batch, step_mode=mode))


def build_head(name: str, data: datasets.DataBundle) -> cfal.heads.Head:
  return build_lib.build_head(train_config(name), data.class_counts,
                              data.num_classes)


def build_backbone(name: str, data: datasets.DataBundle,
                   head: cfal.heads.Head) -> keras.Model:
  return build_lib.build_backbone(train_config(name), data.image_shape, head)


def train_dataset(data: datasets.DataBundle, batch: int) -> tf.data.Dataset:
  """The training stream train.py's iterator reads, on one device."""
  return pipeline.train_dataset(data.source, data.train_indices,
                                global_batch_size=batch,
                                seed=TrainConfig().run.seed)


# ---------------------------------------------------------------------------
# cfal's loop.


@dataclasses.dataclass
class CfalTrainer:
  """cfal's `Steps` for one step mode, its data iterator and a train check."""

  steps: Steps
  iterator: object
  trained: Callable[[], bool]
  batch: int


def cfal_trainer(name: str, data: datasets.DataBundle, mode: str,
                 batch: int = BATCH) -> CfalTrainer:
  """Strategy, backbone, head, optimizer, steps and data as train.py
  --step_mode=<mode> --batch_size=<batch> wires them."""
  trainer = common.build_trainer(train_config(name, batch, mode), data=data)
  head = trainer.built.head
  initial = head.prototypes.numpy()
  return CfalTrainer(
      steps=trainer.steps, iterator=trainer.iterator, batch=batch,
      trained=lambda: not np.allclose(head.prototypes.numpy(), initial))


def cfal_config(name: str, trainer: CfalTrainer, steps_per_loop: int,
                min_steps: int, traced: bool = False) -> Config:
  """cfal's train loop, `steps_per_loop` steps per compiled call.

  A timed sample makes whole calls, at least `min_steps` steps. Configurations
  differing only in `steps_per_loop` share one trainer (the step count is a
  tensor, so one trace serves them all) and keep training it; `traced` says
  another configuration already warms it up.
  """
  mode = trainer.steps.mode
  total = steps_per_loop * math.ceil(min_steps / steps_per_loop)
  config = Config(backbone=name, trainer="cfal", mode=mode,
                  loop=steps_per_loop, batch=trainer.batch, steps=total,
                  warm_steps=1, sample=lambda: None, warm=lambda: None,
                  check=trainer.trained)

  def run(n: int, k: int) -> None:
    for _ in range(n // k):
      results = trainer.steps.train_loop(trainer.iterator, tf.constant(k))
      config.losses.append(float(results["loss"]))

  config.sample = lambda: run(total, steps_per_loop)
  if traced:
    config.warm_steps = 0
  else:
    config.warm = lambda: run(1, 1)
  return config


# ---------------------------------------------------------------------------
# Keras fit, the seeds' way.


class HeadLayer(keras.layers.Layer):
  """A cfal head as a Keras layer: [embeddings, labels] -> per-example loss.

  Keras 3 does not track the variables of a `tf.Module`, so `fit` would
  never train them. The layer owns Keras weights initialised from the
  head's and points the head at their storage: the optimizer updates the
  same variables the head reads.

  Args:
    head: a cfal head whose only trainable variable is `prototypes`.
  """

  def __init__(self, head: cfal.heads.Head, **kwargs):
    super().__init__(**kwargs)
    if [id(v) for v in head.trainable_variables] != [id(head.prototypes)]:
      raise ValueError(f"{type(head).__name__} has trainable variables "
                       f"besides `prototypes`; HeadLayer only moves that one.")
    self.head = head
    self.prototypes = self.add_weight(
        shape=tuple(head.prototypes.shape), name="prototypes",
        initializer=keras.initializers.Constant(head.prototypes.numpy()))
    head.prototypes = self.prototypes.value   # the tf.Variable behind it

  def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
    embeddings, labels = inputs
    return self.head.loss(embeddings, labels)

  def compute_output_shape(self, input_shape):
    return (input_shape[0][0],)


def identity_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
  """The model already outputs the per-example loss; Keras averages it."""
  del y_true
  return y_pred


def keras_model(name: str, data: datasets.DataBundle, *, jit_compile,
                steps_per_execution: int, batch: int = BATCH
                ) -> tuple[keras.Model, HeadLayer]:
  """Backbone + HeadLayer as a functional model, compiled with the
  optimizer train.py would make at this batch size."""
  config = train_config(name, batch)
  head = build_head(name, data)
  images = keras.Input(data.image_shape, name="images")
  labels = keras.Input((), dtype="int32", name="labels")
  layer = HeadLayer(head, name="cfal_head")
  model = keras.Model([images, labels], layer(
      [build_backbone(name, data, head)(images), labels]))
  options = {} if jit_compile is None else {
      "jit_compile": jit_compile, "steps_per_execution": steps_per_execution}
  total_steps = math.ceil(config.run.epochs * pipeline.steps_per_epoch(
      len(data.train_indices), batch))
  model.compile(optimizer=build_lib.build_optimizer(config, total_steps),
                loss=identity_loss, **options)
  return model, layer


class FitTimer(keras.callbacks.Callback):
  """Seconds from the first batch to the end of the epoch, one per `fit`.

  Leaves out what a `fit` call does once before its first batch (callbacks,
  the data adapter, a new iterator): a long run pays that once per epoch of
  hundreds of steps, a short timed call would pay it every time.
  """

  def __init__(self, seconds: list[float]):
    super().__init__()
    self.seconds = seconds
    self.began: float | None = None

  def on_train_batch_begin(self, batch, logs=None):
    if self.began is None:
      self.began = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(time.perf_counter() - self.began)
    self.began = None


def trained_check(layer: HeadLayer) -> Callable[[], bool]:
  initial = layer.prototypes.numpy()
  return lambda: not np.allclose(layer.prototypes.numpy(), initial)


def keras_config(name: str, data: datasets.DataBundle, jit_compile: bool,
                 steps_per_execution: int, plan: Plan) -> Config:
  """`model.fit` on cfal's tf.data pipeline (inputs [images, labels])."""
  model, layer = keras_model(name, data, jit_compile=jit_compile,
                             steps_per_execution=steps_per_execution)
  dataset = train_dataset(data, BATCH).map(
      tf.autograph.experimental.do_not_convert(
          lambda images, labels: ((images, labels), labels)))
  total = steps_per_execution * math.ceil(plan.min_steps
                                          / steps_per_execution)
  default = not jit_compile and steps_per_execution == 1
  mode = (f"jit_compile={jit_compile}"
          + (" (default compile)" if default else ""))
  config = Config(backbone=name, trainer="keras", mode=mode,
                  loop=steps_per_execution, batch=BATCH, steps=total,
                  warm_steps=1, sample=lambda: None, warm=lambda: None,
                  check=trained_check(layer), inner=[])
  timer = FitTimer(config.inner)

  def fit(source: tf.data.Dataset, steps: int | None,
          callbacks: list[keras.callbacks.Callback]) -> None:
    history = model.fit(source, epochs=1, steps_per_epoch=steps, verbose=0,
                        callbacks=callbacks)
    config.losses.append(float(history.history["loss"][-1]))

  config.sample = lambda: fit(dataset, total, [timer])
  # One batch: traces the same function, runs one step whatever the
  # steps_per_execution (the compiled loop stops when the data ends).
  config.warm = lambda: fit(dataset.take(1), None, [])
  return config


def seeds_config(name: str, data: datasets.DataBundle, plan: Plan) -> Config:
  """The seeds' setup: default compile, NumPy arrays, fit's batch of 32.

  Each sample fits one epoch over fresh examples.
  """
  model, layer = keras_model(name, data, jit_compile=None,
                             steps_per_execution=1, batch=SEEDS_BATCH)
  per_sample = plan.seeds_steps * SEEDS_BATCH
  needed = per_sample * (plan.repeats + 1) + SEEDS_BATCH
  order = np.random.default_rng(0).permutation(data.train_indices)[:needed]
  images = data.source.load_batch(tf.constant(order)).numpy()
  labels = data.source.labels[order]
  position = [0]
  config = Config(backbone=name, trainer="keras-seeds",
                  mode="default compile, NumPy input", loop=1,
                  batch=SEEDS_BATCH, steps=plan.seeds_steps, warm_steps=1,
                  sample=lambda: None, warm=lambda: None,
                  check=trained_check(layer), inner=[])
  timer = FitTimer(config.inner)

  def fit(count: int, callbacks: list[keras.callbacks.Callback]) -> None:
    rows = slice(position[0], position[0] + count)
    position[0] += count
    history = model.fit([images[rows], labels[rows]], labels[rows],
                        epochs=1, verbose=0, callbacks=callbacks)
    config.losses.append(float(history.history["loss"][-1]))

  config.sample = lambda: fit(per_sample, [timer])
  config.warm = lambda: fit(SEEDS_BATCH, [])
  return config


# ---------------------------------------------------------------------------
# The compute limit.


def matmul_configs(size: int) -> list[Config]:
  """A float32 [size, size] x [size, size] product, three ways."""
  a = tf.random.stateless_normal([size, size], seed=[1, 2])
  b = tf.random.stateless_normal([size, size], seed=[3, 4])
  host_a, host_b = a.numpy(), b.numpy()
  kinds = {
      "tf.function": tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)),
                                 autograph=False),
      "tf.function xla": tf.function(
          lambda: tf.reduce_sum(tf.matmul(a, b)), autograph=False,
          jit_compile=True),
      "numpy (OpenBLAS)": lambda: (host_a @ host_b).sum(),
  }
  configs = []
  for kind, product in kinds.items():
    run = lambda product=product: float(product())  # noqa: E731
    configs.append(Config(backbone="-", trainer="matmul",
                          mode=kind, loop=1, batch=0,
                          steps=1, warm_steps=1, sample=run, warm=run,
                          flops=2.0 * size ** 3))
  return configs


def forward_flops(model: keras.Model) -> float:
  """Forward FLOPs per example of the conv and dense layers (2 * MACs).

  Walks nested models; BatchNorm, activations, pooling and adds are left
  out (element-wise, a few percent of the total at these widths).
  """
  total = 0.0
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      total += forward_flops(layer)
    elif isinstance(layer, keras.layers.Conv2D):
      _, height, width, _ = layer.output.shape
      total += 2.0 * height * width * math.prod(layer.kernel.shape)
    elif isinstance(layer, keras.layers.Dense):
      total += 2.0 * math.prod(layer.kernel.shape)
  return total


# ---------------------------------------------------------------------------
# Measuring.


def backbone_configs(name: str, data: datasets.DataBundle,
                     plan: Plan) -> list[Config]:
  """Every configuration measured for one backbone."""
  configs = [cfal_config(name, cfal_trainer(name, data, "eager"), 1,
                         plan.eager_steps)]
  for mode in ("function", "xla"):
    trainer = cfal_trainer(name, data, mode)
    configs += [cfal_config(name, trainer, k, plan.min_steps, traced=i > 0)
                for i, k in enumerate(plan.loops)]
  for jit_compile in (False, True):
    for k in plan.loops:
      configs.append(keras_config(name, data, jit_compile, k, plan))
  configs.append(seeds_config(name, data, plan))
  # cfal at the seeds' batch size: separates the batch from the framework.
  configs.append(cfal_config(
      name, cfal_trainer(name, data, "function", SEEDS_BATCH),
      plan.loops[1], plan.seeds_steps))
  return configs


def warm_up(configs: Sequence[Config]) -> dict[str, float]:
  """Runs every warm-up call once; seconds each (tracing included)."""
  seconds = {}
  for config in configs:
    began = time.perf_counter()
    config.warm()
    seconds[config.label] = time.perf_counter() - began
    if config.warm_steps:
      print(f"  warmed {config.label} in {seconds[config.label]:.1f} s",
            flush=True)
  return seconds


def measure(name: str, data: datasets.DataBundle, plan: Plan,
            matmuls: Sequence[Config], phases: dict) -> list[dict]:
  """Builds, warms and times one backbone's configurations (and matmuls);
  records the wall seconds of each phase in `phases`."""
  began = time.perf_counter()
  print(f"{name}: building and tracing", flush=True)
  configs = backbone_configs(name, data, plan)
  warm = warm_up(configs)
  phases[f"{name} build+trace"] = time.perf_counter() - began
  print(f"{name}: built and traced in {phases[f'{name} build+trace']:.0f} s;"
        f" timing {len(configs)} configurations x {plan.repeats}", flush=True)
  began = time.perf_counter()
  everything = configs + list(matmuls)
  times = common.interleaved({c.label: c.sample for c in everything},
                             repeats=plan.repeats, warmup=0)
  phases[f"{name} timed"] = time.perf_counter() - began
  print(f"{name}: timed in {phases[f'{name} timed']:.0f} s", flush=True)
  train_flops = 3.0 * forward_flops(build_backbone(name, data,
                                                   build_head(name, data)))
  return [result_row(c, times[c.label], warm.get(c.label, 0.0), train_flops)
          for c in everything]


def result_row(config: Config, calls: list[float], warm_seconds: float,
               train_flops: float) -> dict:
  """One configuration's raw and median figures."""
  samples = calls if config.inner is None else config.inner
  seconds = common.median(samples)
  row = {"backbone": config.backbone, "trainer": config.trainer,
         "mode": config.mode, "loop": config.loop, "batch": config.batch,
         "steps_per_sample": config.steps, "seconds": samples,
         "median_seconds": seconds, "call_seconds": calls,
         "call_overhead_seconds": common.median(
             [c - s for c, s in zip(calls, samples)])}
  if config.trainer == "matmul":
    row.update(flops=config.flops, flops_per_second=config.flops / seconds)
    return row
  per_step = seconds / config.steps
  row.update(
      examples_per_second=config.batch / per_step,
      trace_seconds=(max(0.0, warm_seconds - config.warm_steps * per_step)
                     if config.warm_steps else None),
      loss_first=config.losses[0], loss_last=config.losses[-1],
      head_trained=bool(config.check()),
      train_flops_per_example=train_flops)
  return row


# ---------------------------------------------------------------------------
# Reporting.


def rate(rows: Sequence[dict], **match) -> float:
  """Examples/s of the row matching every `key=value` in `match` (at batch
  BATCH unless `match` names another)."""
  match = {"batch": BATCH, **match}
  found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
  if len(found) != 1:
    raise KeyError(f"{len(found)} rows match {match}")
  return found[0]["examples_per_second"]


def best(rows: Sequence[dict], **match) -> dict:
  found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
  return max(found, key=lambda r: r["examples_per_second"])


def matmul_rates(rows: Sequence[dict]) -> dict[str, float]:
  """Median FLOP/s of each matmul kind over every round of every group."""
  kinds: dict[str, list[float]] = {}
  for r in rows:
    if r["trainer"] == "matmul":
      kinds.setdefault(r["mode"], []).extend(
          r["flops"] / t for t in r["seconds"])
  return {kind: common.median(values) for kind, values in kinds.items()}


def summary(rows: Sequence[dict], name: str,
            ceilings: dict[str, float]) -> dict:
  """The ratios the targets are about, for one backbone."""
  own = [r for r in rows if r["backbone"] == name]
  cfal_best = best(own, trainer="cfal", batch=BATCH)
  cfal_any = best(own, trainer="cfal")     # at either batch size
  keras_best = best(own, trainer="keras")
  seeds = best(own, trainer="keras-seeds")
  achieved = (cfal_any["examples_per_second"]
              * cfal_any["train_flops_per_example"])
  return {
      "backbone": name, "cfal_best": cfal_best, "cfal_any": cfal_any,
      "keras_best": keras_best, "seeds": seeds,
      "vs_keras": cfal_best["examples_per_second"]
                  / keras_best["examples_per_second"],
      "vs_seeds": cfal_any["examples_per_second"]
                  / seeds["examples_per_second"],
      "achieved_flops": achieved, "matmul_flops": max(ceilings.values()),
      "flop_fraction": achieved / max(ceilings.values()),
      "ceiling_kind": max(ceilings, key=ceilings.get),
      "tf_matmul_flops": ceilings["tf.function"],
      "train_gflop_per_example": cfal_best["train_flops_per_example"] / 1e9,
  }


def describe(row: dict) -> str:
  steps = "1 step" if row["loop"] == 1 else f"{row['loop']} steps"
  return (f"{row['trainer']} {row['mode']}, {steps} per call, "
          f"batch {row['batch']}")


def throughput_table(rows: Sequence[dict], summaries: dict) -> str:
  headers = ["backbone", "trainer", "mode", "steps/call", "batch",
             "examples/s", "x best Keras", "x seeds b32", "trace s",
             "loss first -> last", "head trained"]
  body = []
  for r in rows:
    if r["trainer"] == "matmul":
      continue
    s = summaries[r["backbone"]]
    speed = r["examples_per_second"]
    body.append([
        r["backbone"], r["trainer"], r["mode"], r["loop"], r["batch"],
        f"{speed:.0f}",
        f"{speed / s['keras_best']['examples_per_second']:.2f}",
        f"{speed / s['seeds']['examples_per_second']:.2f}",
        ("shared" if r["trace_seconds"] is None
         else f"{r['trace_seconds']:.1f}"),
        f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}",
        "yes" if r["head_trained"] else "NO"])
  return common.markdown_table(headers, body, align="lllrrrrrrll")


def modes_table(rows: Sequence[dict], loops: Sequence[int]) -> str:
  headers = ["backbone", "steps/call", "eager ex/s", "function ex/s",
             "xla ex/s", "xla / function", "function vs 1/call",
             "xla vs 1/call"]
  body = []
  names = dict.fromkeys(r["backbone"] for r in rows if r["backbone"] != "-")
  for name in names:
    eager = rate(rows, backbone=name, trainer="cfal", mode="eager")
    fn1 = rate(rows, backbone=name, trainer="cfal", mode="function", loop=1)
    xla1 = rate(rows, backbone=name, trainer="cfal", mode="xla", loop=1)
    for k in loops:
      fn = rate(rows, backbone=name, trainer="cfal", mode="function", loop=k)
      xla = rate(rows, backbone=name, trainer="cfal", mode="xla", loop=k)
      body.append([name, k, f"{eager:.0f}" if k == loops[0] else "",
                   f"{fn:.0f}", f"{xla:.0f}", f"{xla / fn:.2f}",
                   f"{fn / fn1:.2f}", f"{xla / xla1:.2f}"])
  return common.markdown_table(headers, body)


def compute_table(summaries: dict, ceilings: dict[str, float]) -> str:
  headers = ["backbone", "train GFLOP/example", "best cfal configuration",
             "examples/s", "achieved GFLOP/s", "x fastest matmul",
             "x TF's own matmul"]
  body = [[s["backbone"], f"{s['train_gflop_per_example']:.3f}",
           describe(s["cfal_any"]),
           f"{s['cfal_any']['examples_per_second']:.0f}",
           f"{s['achieved_flops'] / 1e9:.1f}",
           f"{s['flop_fraction']:.0%}",
           f"{s['achieved_flops'] / s['tf_matmul_flops']:.0%}"]
          for s in summaries.values()]
  body += [[f"matmul: {kind}", "", "", "", f"{rate / 1e9:.1f}", "", ""]
           for kind, rate in ceilings.items()]
  return common.markdown_table(headers, body)


def findings(rows: Sequence[dict], summaries: dict,
             loops: Sequence[int]) -> list[str]:
  """One sentence per target, then what step modes and steps/call buy."""
  out = []
  for s in summaries.values():
    out += target_findings(s)
  for name in summaries:
    out.append(mode_finding(rows, name, loops))
  out.append(recommendation(rows, list(summaries), loops))
  return out


def target_findings(s: dict) -> list[str]:
  name, cfal_best, seeds = s["backbone"], s["cfal_best"], s["seeds"]
  out = [
      f"{name}: best cfal loop ({describe(cfal_best)}) is "
      f"{versus(cfal_best, s['keras_best'])} the best-tuned Keras fit "
      f"({describe(s['keras_best'])}): target >= {TARGET_VS_KERAS:.1f}x "
      f"{verdict(s['vs_keras'], TARGET_VS_KERAS)}.",
      f"{name}: best cfal loop ({describe(s['cfal_any'])}) is "
      f"{versus(s['cfal_any'], seeds)} the seeds' Keras fit (default "
      f"compile, NumPy input, batch {SEEDS_BATCH}) in examples/s: target >= "
      f"{TARGET_VS_SEEDS:.1f}x {verdict(s['vs_seeds'], TARGET_VS_SEEDS)}; "
      f"at batch {BATCH} cfal's best is {versus(cfal_best, seeds)} it."]
  fraction = s["flop_fraction"]
  why = ("" if fraction >= TARGET_FLOP_FRACTION else
         "; why: narrow convs (at most 64 channels) on maps of 28x28 or "
         "less do too little work per weight to keep the FMA units busy, "
         "the BatchNorm, ReLU, pooling and optimizer passes are "
         "memory-bound work the FLOP count leaves out")
  if why and s["ceiling_kind"] != "tf.function":
    why += (f", and TensorFlow's own kernels are slow here: its float32 "
            f"matmul reaches {s['tf_matmul_flops'] / s['matmul_flops']:.0%}"
            f" of {s['ceiling_kind']}'s")
  out.append(
      f"{name}: the best cfal step reaches {fraction:.0%} of the "
      f"{s['matmul_flops'] / 1e9:.0f} GFLOP/s of the fastest large float32 "
      f"matmul ({s['ceiling_kind']}) and "
      f"{s['achieved_flops'] / s['tf_matmul_flops']:.0%} of TensorFlow's "
      f"default matmul kernel ({s['achieved_flops'] / 1e9:.1f} GFLOP/s; "
      f"{s['train_gflop_per_example']:.3f} GFLOP per example counted "
      f"analytically from the conv/dense shapes, train = 3x forward): target "
      f"{TARGET_FLOP_FRACTION:.0%} "
      f"{verdict(fraction, TARGET_FLOP_FRACTION)}{why}.")
  return out


def verdict(value: float, target: float) -> str:
  """Met or missed, on the medians."""
  if value >= target:
    return "met"
  return f"missed by {target / value:.2f}x"


def cfal_row(rows: Sequence[dict], name: str, mode: str, k: int) -> dict:
  found = [r for r in rows if r["backbone"] == name and r["trainer"] == "cfal"
           and r["mode"] == mode and r["loop"] == k and r["batch"] == BATCH]
  return found[0]


def clearly_faster(a: dict, b: dict) -> bool:
  """Every timed sample of row `a` beat every sample of row `b` (seconds per
  example): a difference the run's noise cannot explain."""
  def per_example(row: dict, pick) -> float:
    return pick(row["seconds"]) / (row["steps_per_sample"] * row["batch"])
  return per_example(a, max) < per_example(b, min)


def versus(a: dict, b: dict) -> str:
  """`a`'s speed as a multiple of `b`'s, marked when the samples overlap."""
  ratio = a["examples_per_second"] / b["examples_per_second"]
  clear = clearly_faster(a, b) or clearly_faster(b, a)
  return f"{ratio:.2f}x" + ("" if clear else " (within noise)")


def mode_finding(rows: Sequence[dict], name: str,
                 loops: Sequence[int]) -> str:
  """xla against function at each steps/call, and what steps/call buys."""
  def row(mode: str, k: int) -> dict:
    return cfal_row(rows, name, mode, k)

  xla = ", ".join(f"{k}/call {versus(row('xla', k), row('function', k))}"
                  for k in loops)
  first = row("function", loops[0])
  gains = ", ".join(f"{k}/call {versus(row('function', k), first)}"
                    for k in loops[1:])
  fastest = max((row("function", k) for k in loops),
                key=lambda r: r["examples_per_second"])
  eager = versus(row("eager", 1), fastest)
  return (f"{name}: xla / function at {xla}; function mode at more steps "
          f"per call against 1: {gains}; eager runs at {eager} the best "
          f"function loop.")


def recommendation(rows: Sequence[dict], names: Sequence[str],
                   loops: Sequence[int]) -> str:
  """What --step_mode=auto and the default --steps_per_loop should be.

  A change from the current defaults (function on CPU, 50 steps per call)
  is recommended only when every sample of the alternative beat every
  sample of the default: on a shared machine a median alone flips between
  runs.
  """
  def best(name: str, mode: str) -> dict:
    return max((cfal_row(rows, name, mode, k) for k in loops),
               key=lambda r: r["examples_per_second"])

  xla_wins = all(clearly_faster(best(n, "xla"), best(n, "function"))
                 for n in names)
  mode = ("xla: it beat function on every backbone beyond the noise" if
          xla_wins else "function (unchanged): xla did not beat it beyond "
          "the noise on every backbone")
  current = max(loops)
  better = sorted({k for n in names for k in loops
                   if clearly_faster(cfal_row(rows, n, "function", k),
                                     cfal_row(rows, n, "function", current))})
  loop = (f"keep {current}: no other steps/call beat it beyond the noise"
          if not better else
          f"{', '.join(map(str, better))} beat {current} beyond the noise")
  return (f"Recommendation: --step_mode=auto on CPU -> {mode} (best xla / "
          f"best function: " + ", ".join(
              f"{n} {versus(best(n, 'xla'), best(n, 'function'))}"
              for n in names)
          + f"); default --steps_per_loop: {loop}.")


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: 1 repeat, short calls, seed_cnn only; "
                           "prints, leaves bench/results/loop.json alone")
  parser.add_argument("--backbones", default=None,
                      help="comma-separated subset of seed_cnn,resnet")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--report_only", action="store_true",
                      help="rebuild the tables and findings from the rows "
                           "saved in bench/results/loop.json; measure nothing")
  return parser.parse_args()


def make_plan(args: argparse.Namespace) -> Plan:
  plan = QUICK if args.quick else FULL
  if args.backbones:
    plan = dataclasses.replace(plan, backbones=tuple(
        args.backbones.split(",")))
  if args.repeats:
    plan = dataclasses.replace(plan, repeats=args.repeats)
  return plan


def make_tables(rows: Sequence[dict], summaries: dict,
                ceilings: dict[str, float], plan: Plan) -> list[dict]:
  return [
      {"title": "Train-step throughput: cfal loop vs Keras fit",
       "markdown": throughput_table(rows, summaries),
       "note": (f"Examples/s, median of {plan.repeats} interleaved samples; "
                f"Fashion-MNIST, CFAL head, train.py's optimizer (Adam 1e-3, "
                f"cosine decay) on both sides. "
                f"resnet = {RESNET_OPTIONS}. Keras rows time each `fit` "
                "call from its first batch to its epoch's end (the set-up "
                "before the first batch, which a long run pays once per "
                "epoch, is left out; raw results keep it). 'trace s' is the "
                "warm-up call's excess over a timed step; 'shared': the "
                "configuration reuses the trace of the row above.")},
      {"title": "Step modes and steps per compiled call (cfal)",
       "markdown": modes_table(rows, plan.loops),
       "note": "Ratios of configurations in the same interleaved run."},
      {"title": "Compute limit",
       "markdown": compute_table(summaries, ceilings),
       "note": (f"Matmul rows: float32 {plan.matmul_size}x"
                f"{plan.matmul_size}, median over every round; the fastest "
                "is the ceiling. Train FLOPs counted analytically (conv and "
                "dense layers, 2*MACs, x3 for forward + backward), at the "
                "best cfal configuration's examples/s.")},
  ]


def measure_all(plan: Plan) -> tuple[list[dict], dict]:
  """Every backbone's rows, and the wall seconds of each phase."""
  data = datasets.load_data(datasets.DataConfig(name="fashion_mnist"))
  matmuls = matmul_configs(plan.matmul_size)
  for matmul in matmuls:
    matmul.warm()
  phases = {"start-up": time.perf_counter() - STARTED}
  rows = []
  for name in plan.backbones:
    rows += measure(name, data, plan, matmuls, phases)
  return rows, phases


def saved_run() -> dict:
  """The last run's record, with its plan as a `Plan`."""
  saved = json.loads((common.RESULTS / "loop.json").read_text())
  raw = saved["results"]["plan"]
  saved["plan"] = Plan(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in raw.items()})
  return saved


def main() -> None:
  args = parse_args()
  if args.report_only:
    saved = saved_run()
    plan, results = saved["plan"], saved["results"]
    rows, seconds, command = results["rows"], saved["seconds"], saved["command"]
    extra = {"phase_seconds": results["phase_seconds"],
             "cpu_seconds": results["cpu_seconds"],
             "report_rebuilt_from_saved_rows": True}
  else:
    plan = make_plan(args)
    rows, phases = measure_all(plan)
    seconds = time.perf_counter() - STARTED
    command = " ".join([".venv/bin/python bench/loop.py", *sys.argv[1:]])
    extra = {"phase_seconds": phases, "cpu_seconds": time.process_time()}
  ceilings = matmul_rates(rows)
  summaries = {n: summary(rows, n, ceilings) for n in plan.backbones}
  tables = make_tables(rows, summaries, ceilings, plan)
  notes = findings(rows, summaries, plan.loops)
  if plan.repeats < 3:
    notes.insert(0, f"Smoke run ({plan.repeats} repeat): the ratios below "
                    "are single samples, not medians; run without --quick.")
  path = "nothing (smoke run)"
  if not args.quick:
    path = common.write_result(
        "loop", command=command, tables=tables, findings=notes,
        results={"plan": dataclasses.asdict(plan), "rows": rows,
                 "summaries": summaries, **extra},
        seconds=seconds)
  for table in tables:
    print(f"\n### {table['title']}\n\n{table['markdown']}\n\n{table['note']}")
  print("\nFindings:\n" + "\n".join(f"- {f}" for f in notes))
  print("\nPhases: " + ", ".join(
      f"{k} {v:.0f} s" for k, v in extra["phase_seconds"].items()))
  cpu = extra["cpu_seconds"]
  print(f"Total {seconds:.0f} s wall, {cpu:.0f} s CPU "
        f"({cpu / (os.cpu_count() or 1):.0f} s if all cores were ours); "
        f"wrote {path}", flush=True)
  # Destroying the tf.data iterators can hold interpreter teardown for tens
  # of seconds (their threads finish their waits first); everything is
  # written, so leave at once.
  os._exit(0)


if __name__ == "__main__":
  main()
