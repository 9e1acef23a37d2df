"""What mirroring over logical CPU devices costs, and whether it agrees.

`--cpu_replicas=N` splits the CPU into N logical devices and mirrors the
model over them (`cfal.training.strategy.make_strategy`); it exists to test
the distribution code without GPUs, so it should give the numbers one
device gives and its cost should be known. For one device (the default
strategy), 2 and 4 replicas, at the same global batch (128, the default
recipe: seed_cnn with embedding 64 + CFAL), each in its own process
(logical devices must be set before TensorFlow initialises; the processes
run one after the other, one device first and again last so that a
drifting machine shows), this measures:

- the time of a compiled train step (median of repeated calls of several
  steps, after an untimed warm-up; tracing timed apart);
- the losses of the first K steps from the same initial weights and the
  same global batches with SGD, against one device's: synchronized
  BatchNorm and all-reduced gradients should make them equal up to
  float32 reduction order (~1e-3 relative, as tests/test_training.py
  checks).

    .venv/bin/python bench/distribution.py          # ~1.5 min on 2 idle cores
    .venv/bin/python bench/distribution.py --quick  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

STARTED = time.perf_counter()   # the budget counts imports too
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from cfal import cli  # noqa: E402  (before TensorFlow: its oneDNN setting)
cli.prepare_environment()
import tensorflow as tf  # noqa: E402

from bench.common import (build_trainer, interleaved,  # noqa: E402
                          markdown_table, median, finish, run_child)
from cfal.training.config import (OptimizerConfig, RunConfig,  # noqa: E402
                                  TrainConfig)

# One device first and last: a drifting machine shows as two different
# one-device times instead of silently skewing the ratios.
ORDER = (1, 2, 4, 1)
AGREEMENT = 1e-3          # relative, on the per-step losses
LEARNING_RATE = 0.003     # SGD: Adam's sign-like first steps amplify noise


def child(replicas: int, *, check_steps: int, steps: int,
          repeats: int) -> dict:
  """Runs in a fresh process: builds, checks and times one configuration.

  The parent imports TensorFlow but never touches a device; here the
  logical devices are made first (`build` makes the strategy before
  anything else), as train.py --cpu_replicas=N does.
  """
  config = TrainConfig(
      optimizer=OptimizerConfig(name="sgd", learning_rate=LEARNING_RATE,
                                schedule="constant"),
      run=RunConfig(cpu_replicas=replicas if replicas > 1 else 0))
  trainer = build_trainer(config)
  strategy, train, iterator = (trainer.built.strategy, trainer.steps,
                               trainer.iterator)

  began = time.perf_counter()
  train.train_loop(iterator, tf.constant(0))   # trace only
  trace = time.perf_counter() - began
  one = tf.constant(1)
  losses = [float(train.train_loop(iterator, one)["loss"])
            for _ in range(check_steps)]
  n = tf.constant(steps)
  times = interleaved(
      {"train": lambda: float(train.train_loop(iterator, n)["loss"])},
      repeats=repeats)["train"]
  return {"replicas": strategy.num_replicas_in_sync,
          "logical_cpus": len(tf.config.list_logical_devices("CPU")),
          "losses": losses, "trace_seconds": trace, "steps": steps,
          "runs": times, "step_seconds": median(times) / steps}


def relative_difference(a: list[float], b: list[float]) -> float:
  return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def pool(children: list[dict]) -> list[dict]:
  """One entry per replica count, in first-seen order: the per-step times
  of every child with that count pooled, the first child's losses."""
  pooled: dict[int, dict] = {}
  for c in children:
    if "runs" not in c:
      pooled.setdefault(c["replicas"], c)
      continue
    entry = pooled.setdefault(c["replicas"], {**c, "per_step": [],
                                              "child_steps": []})
    entry["per_step"] += [t / c["steps"] for t in c["runs"]]
    entry["child_steps"].append(c["step_seconds"])
    entry["step_seconds"] = median(entry["per_step"])
  return list(pooled.values())


def rows(results: list[dict]) -> list[list[str]]:
  base = results[0]
  out = []
  for r in results:
    if "step_seconds" not in r:
      out.append([str(r["replicas"]), r.get("status", "failed"), "-", "-",
                  "-", "-"])
      continue
    diff = relative_difference(r["losses"], base["losses"])
    out.append([
        "1 (default strategy)" if r["replicas"] == 1
        else f"{r['replicas']} (mirrored, logical CPUs)",
        " / ".join(f"{t * 1000:.0f}" for t in r["child_steps"]) + " ms",
        f"{r['step_seconds'] / base['step_seconds']:.2f}x",
        f"{r['trace_seconds']:.1f} s",
        f"{diff:.1e}",
        "yes" if diff <= AGREEMENT else "NO"])
  return out


def findings(results: list[dict]) -> list[str]:
  base = results[0]
  ok = [r for r in results[1:] if "step_seconds" in r]
  cost = "; ".join(
      f"{r['replicas']} replicas "
      f"{r['step_seconds'] / base['step_seconds']:.2f}x" for r in ok)
  diffs = [relative_difference(r["losses"], base["losses"]) for r in ok]
  worst = max(diffs) if diffs else float("nan")
  agree = len(ok) == len(results) - 1 and worst <= AGREEMENT
  verdict = "met" if agree else "missed"
  traces = ", ".join(f"{r['trace_seconds']:.1f} s for {r['replicas']}"
                     for r in results if "trace_seconds" in r)
  slower = all(r["step_seconds"] >= base["step_seconds"] for r in ok)
  how = ("The logical devices share the same 2 cores, so mirroring only "
         "adds work (smaller per-replica kernels, gradient all-reduces, "
         "synchronized BatchNorm)" if slower else
         "Some replica counts beat one device: the replicas run their "
         "kernels side by side on the 2 cores, which can use them better "
         "than one device's kernels on the whole batch")
  return [f"Step time at the same global batch of 128 against one device: "
          f"{cost}. {how}. Tracing grows with the replicas ({traces}).",
          f"Replicas agree with one device to {AGREEMENT:g} relative on "
          f"the first {len(base['losses'])} SGD losses: {verdict}: largest "
          f"difference {worst:.1e}."]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: fewer steps and repeats")
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--check_steps", type=int, default=4,
                      help=argparse.SUPPRESS)
  parser.add_argument("--steps", type=int, default=6, help=argparse.SUPPRESS)
  parser.add_argument("--repeats", type=int, default=2,
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args.child, check_steps=args.check_steps,
                           steps=args.steps, repeats=args.repeats)))
    return

  load_before = os.getloadavg()
  sizes = ["--steps", "3", "--repeats", "1", "--check_steps", "2"] \
      if args.quick else []
  children = []
  for replicas in ORDER[:3] if args.quick else ORDER:
    result = run_child([__file__, "--child", str(replicas), *sizes],
                       timeout=600)
    result.setdefault("replicas", replicas)
    children.append(result)
    print(f"  {replicas} replica(s): "
          f"{result.get('step_seconds', result.get('status'))}", flush=True)
  seconds = time.perf_counter() - STARTED
  results = pool(children)
  if "step_seconds" not in results[0]:
    sys.exit(f"The one-device run failed: {results[0]}")

  table = {
      "title": "Mirroring over logical CPU devices, global batch 128",
      "markdown": markdown_table(
          ["replicas", "step (per process)", "vs one device", "tracing",
           "loss difference", f"agrees to {AGREEMENT:g}"], rows(results)),
      "note": (f"seed_cnn (embedding 64) + CFAL, SGD lr {LEARNING_RATE}. One "
               f"process per configuration, run in the order "
               f"{', '.join(map(str, ORDER))} replicas (one device first and "
               f"last, to show drift); each times {children[0]['steps']}-"
               f"step calls after a warm-up call. Step: the median per "
               f"process; the ratio uses the median over all of a "
               f"configuration's calls. Loss difference: largest relative "
               f"difference of the first {len(results[0]['losses'])} "
               f"per-step losses from one device's.")}
  finish("distribution", command=".venv/bin/python bench/distribution.py",
         tables=[table], findings=findings(results),
         results={"children": children, "learning_rate": LEARNING_RATE},
         seconds=seconds, load_before=load_before, save=not args.quick)


if __name__ == "__main__":
  main()
