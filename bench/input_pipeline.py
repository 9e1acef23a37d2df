"""How much of a training step is spent waiting on input data.

For two sources, cfal's in-memory Fashion-MNIST arrays and a folder of
112x112 PNG files (generated once into a temporary directory from real
Fashion-MNIST images, upscaled to RGB), this times, round-robin with
medians (`bench.common.interleaved`), three things on the same model:

- "no input": N compiled train steps fed from one pre-materialised batch
  (`Dataset.from_tensors(batch).repeat()`: nothing to load or decode);
- "real": N compiled train steps fed by the real training iterator
  (`cfal.training.build.train_iterator`, as `cfal.training.runner` makes
  it), one iterator for the whole run, as a training run keeps one;
- "iterator only": pulling M batches from another such iterator inside a
  compiled loop, with no training (timed after the other two).

Each timed call follows an untimed call of the same configuration
(`interleaved(settle=True)`): an iterator goes on filling its prefetch
buffers while other configurations run, and the untimed call uses up
those batches, so the timed one runs in the steady state of a long run,
where producing batches overlaps the steps and competes with them for the
2 cores. The data wait is the median over repeats of
`(real - no input) / real`, the two timed calls of a repeat close together.

A run also pays once, when it starts or resumes, for its iterator's
start-up (threads, the first batches, autotuning). That is measured apart:
the first call on a fresh iterator against the call after it (about
0.1 s). An earlier version of this program gave every timed 4-step call a
fresh iterator, fourteen of them alive at once, and reported 35% data wait
for Fashion-MNIST; neither that start-up nor producing batches (2.5 ms of
a 183 ms step) accounts for it, and a run's one steady iterator does not
show it: the figure measured the harness, not the pipeline.

Tracing is excluded (untimed zero-step calls, then one untimed warm-up
call each). The models: Fashion-MNIST uses the default recipe (seed_cnn
with embedding 64 + CFAL, batch 128); the 112-pixel folder a small ResNet
(one basic block per stage, width 32, embedding 64) + CFAL at batch 64, a
model sized for 112 pixels whose fast steps make input costs show.

    .venv/bin/python bench/input_pipeline.py          # ~1.5 min on 2 idle cores
    .venv/bin/python bench/input_pipeline.py --quick  # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import tempfile
import time
from typing import Iterator

STARTED = time.perf_counter()   # the budget counts imports too
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from cfal import cli  # noqa: E402  (before TensorFlow: its oneDNN setting)
cli.prepare_environment()
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import (Trainer, build_trainer, finish,  # noqa: E402
                          interleaved, markdown_table, median,
                          train_iterator)
from cfal.data import datasets, load_fashion_mnist, pipeline  # noqa: E402
from cfal.training.config import (ModelConfig, RunConfig,  # noqa: E402
                                  TrainConfig)

TARGET_WAIT = 0.05


@dataclasses.dataclass(frozen=True)
class Case:
  """One source and the model trained on it."""

  name: str
  dataset: str
  batch_size: int
  backbone: str
  backbone_args: dict
  image_size: int | None = None

  def config(self) -> TrainConfig:
    return TrainConfig(
        data=datasets.DataConfig(name=self.dataset,
                                 image_size=self.image_size),
        model=ModelConfig(backbone=self.backbone,
                          backbone_args=self.backbone_args),
        run=RunConfig(batch_size=self.batch_size))

  def model_text(self) -> str:
    args = ", ".join(f"{k}={v}" for k, v in self.backbone_args.items())
    return f"{self.backbone}{f' ({args})' if args else ''} + cfal"


def write_png_folder(root: pathlib.Path, *, per_class: int,
                     size: int) -> pathlib.Path:
  """`root/<class>/<i>.png`: real Fashion-MNIST training images, upscaled
  to `size` x `size` RGB with bilinear filtering."""
  images, labels = load_fashion_mnist("train")
  for label in range(int(labels.max()) + 1):
    folder = root / f"class_{label}"
    folder.mkdir(parents=True)
    for i, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
      image = Image.fromarray(images[index]).resize((size, size),
                                                    Image.BILINEAR)
      image.convert("RGB").save(folder / f"{i:04d}.png")
  return root


def cached_iterator(strategy: tf.distribute.Strategy,
                    batch: tuple[tf.Tensor, tf.Tensor]) -> Iterator:
  """An endless iterator over one batch that is already in memory."""
  dataset = tf.data.Dataset.from_tensors(batch).repeat()
  return iter(strategy.experimental_distribute_dataset(dataset))


@tf.function(autograph=False)
def drain(iterator: Iterator, num_batches: tf.Tensor) -> tf.Tensor:
  """Pulls `num_batches` batches inside a compiled loop, as the train
  loop does, and touches every image so nothing is skipped."""
  def body(i, total):
    images, _ = next(iterator)
    return i + 1, total + tf.reduce_sum(images)
  return tf.while_loop(lambda i, _: i < num_batches, body,
                       (tf.constant(0), tf.constant(0.0)))[1]


def startup_seconds(trainer: Trainer, steps: tf.Tensor,
                    samples: int = 2) -> list[float]:
  """A fresh iterator's first call minus the call after it, `samples`
  times: what a run pays once for starting (or resuming) its input."""
  train = trainer.steps
  out = []
  for _ in range(samples):
    iterator = train_iterator(trainer.built)
    calls = []
    for _ in range(2):
      began = time.perf_counter()
      float(train.train_loop(iterator, steps)["loss"])
      calls.append(time.perf_counter() - began)
    out.append(calls[0] - calls[1])
  return out


def measure(case: Case, *, steps: int, pulls: int, repeats: int) -> dict:
  """Times iterator only, no input and real for one case."""
  trainer = build_trainer(case.config())
  built, train = trainer.built, trainer.steps
  strategy, data = built.strategy, built.data
  batch = next(iter(pipeline.train_dataset(
      data.source, data.train_indices, global_batch_size=case.batch_size,
      seed=1)))
  cached = cached_iterator(strategy, batch)
  real = trainer.iterator
  pulled = train_iterator(built)

  began = time.perf_counter()
  train.train_loop(real, tf.constant(0))   # trace only
  trace = time.perf_counter() - began
  drain(pulled, tf.constant(0))
  n, m = tf.constant(steps), tf.constant(pulls)
  startup = startup_seconds(trainer, n)
  times = interleaved({
      "no input": lambda: float(train.train_loop(cached, n)["loss"]),
      "real": lambda: float(train.train_loop(real, n)["loss"])},
      repeats=repeats, settle=True)
  # Timed apart: pulling as fast as it can, the iterator leaves nothing
  # prefetched, but its threads would still be busy when a step began.
  times.update(interleaved(
      {"iterator only": lambda: float(drain(pulled, m))},
      repeats=repeats, settle=True))
  waits = [(r - c) / r for r, c in zip(times["real"], times["no input"])]
  return {"case": case.name, "model": case.model_text(),
          "batch_size": case.batch_size, "steps": steps, "pulls": pulls,
          "image_shape": list(data.image_shape), "trace_seconds": trace,
          "startup_seconds": median(startup), "startup_samples": startup,
          "seconds": {name: median(values) for name, values in times.items()},
          "runs": times, "wait_fraction": median(waits), "waits": waits}


def rows(results: list[dict]) -> list[list[str]]:
  out = []
  for r in results:
    s, n, b = r["seconds"], r["steps"], r["batch_size"]
    per_batch = s["iterator only"] / r["pulls"]
    out.append([
        r["case"], r["model"], str(b),
        f"{per_batch * 1000:.1f} ms ({b / per_batch:.0f} img/s)",
        f"{s['no input'] / n * 1000:.0f} ms",
        f"{s['real'] / n * 1000:.0f} ms",
        f"{r['wait_fraction']:.1%} ({min(r['waits']):.0%} to "
        f"{max(r['waits']):.0%})",
        f"{s['no input'] / n / per_batch:.0f}x",
        f"{r['startup_seconds']:.2f} s"])
  return out


def findings(results: list[dict]) -> list[str]:
  found = []
  for r in results:
    wait = r["wait_fraction"]
    per_batch = r["seconds"]["iterator only"] / r["pulls"] * 1000
    step = r["seconds"]["no input"] / r["steps"] * 1000
    numbers = (f"producing a batch of {r['batch_size']} alone takes "
               f"{per_batch:.1f} ms against a {step:.0f} ms step without "
               f"input")
    if per_batch / step < TARGET_WAIT / 2 and wait >= TARGET_WAIT:
      why = (f"; that is {per_batch / step:.1%} of the step, so the rest is "
             f"contention for the 2 cores or noise")
    else:
      why = ""
    spread = (f"; the paired repeats ranged from {min(r['waits']):.0%} to "
              f"{max(r['waits']):.0%}; starting the iterator costs "
              f"{r['startup_seconds']:.2f} s once per run")
    if r is results[0]:
      verdict = "met" if wait < TARGET_WAIT else "missed"
      found.append(f"Data wait < {TARGET_WAIT:.0%} of the step on "
                   f"{r['case']}: {verdict}: {wait:.1%} ({numbers}{why}"
                   f"{spread}).")
    else:
      found.append(f"{r['case']}: data wait {wait:.1%} of the step "
                   f"({numbers}{why}{spread}); no target set.")
  return found


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: fewer images, steps and repeats")
  args = parser.parse_args()
  load_before = os.getloadavg()
  tf.get_logger().setLevel("ERROR")
  per_class, repeats = (40, 2) if args.quick else (200, 4)
  with tempfile.TemporaryDirectory(prefix="cfal-bench-png-") as tmp:
    began = time.perf_counter()
    root = write_png_folder(pathlib.Path(tmp), per_class=per_class, size=112)
    png_seconds = time.perf_counter() - began
    print(f"Wrote {10 * per_class} PNG files (112x112 RGB) in "
          f"{png_seconds:.1f} s.", flush=True)
    cases = [Case("Fashion-MNIST (in-memory arrays)", "fashion_mnist", 128,
                  "seed_cnn", {}),
             Case("PNG folder, 112x112 RGB", f"folder:{root}", 64, "resnet",
                  {"depth_per_stage": (1, 1, 1, 1), "width": 32},
                  image_size=112)]
    results = []
    sizes = ((2, 20), (2, 10)) if args.quick else ((10, 100), (8, 30))
    for case, (steps, pulls) in zip(cases, sizes):
      results.append(measure(case, steps=steps, pulls=pulls,
                             repeats=repeats))
      print(f"  {case.name}: " + ", ".join(
          f"{k} {v:.2f} s" for k, v in results[-1]["seconds"].items()),
          flush=True)
  seconds = time.perf_counter() - STARTED

  table = {
      "title": "Share of the training step spent on input",
      "markdown": markdown_table(
          ["source", "model", "batch", "iterator only, per batch",
           "step, no input", "step, real input",
           "data wait (range over repeats)", "iterator headroom",
           "start-up, once per run"],
          rows(results)),
      "note": (f"Medians of {repeats} round-robin repeats of N steps (N = "
               f"{', '.join(str(r['steps']) for r in results)}) or, iterator"
               f" only, of M batches (M = "
               f"{', '.join(str(r['pulls']) for r in results)}), after a "
               f"warm-up call; tracing excluded. Each timed call follows an "
               f"untimed one of the same configuration, so the real "
               f"iterator (one per run, as in training) is in its steady "
               f"state. Data wait = median over repeats of (real - no "
               f"input) / real. Headroom = step time without input / time "
               f"to produce one batch. Start-up = a fresh iterator's first "
               f"call minus the call after it, median of 2: paid once when a "
               f"run starts or resumes.")}
  finish("input_pipeline",
         command=".venv/bin/python bench/input_pipeline.py", tables=[table],
         findings=findings(results),
         results={"cases": results, "png_seconds": png_seconds},
         seconds=seconds, load_before=load_before, save=not args.quick,
         timing=f"PNG generation {png_seconds:.1f} s; ")


if __name__ == "__main__":
  main()
