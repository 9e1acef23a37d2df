"""Peak memory of the affinity/CFAL loss: cfal's form against the direct one.

Each configuration runs in a fresh process (so peaks don't mix) that builds a
CFAL head, runs one compiled forward + backward pass and reports its peak
resident memory (ru_maxrss). The direct form materialises `[N, C, m, D]` for
the distances and `[M, M, D]` for the spread regulariser, as the authors'
code does; it runs under an address-space limit (default 16 GiB) so that
running out of memory is a clean error, not the kernel's OOM killer.

    python bench/affinity_memory.py              # table + bench/results/affinity_memory.json
    python bench/affinity_memory.py --classes 10,100,1000,10000
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
BATCH, DIM, CENTERS = 256, 512, 3


def child(impl: str, classes: int, limit_gib: float) -> None:
  """Runs one forward + backward pass and prints a JSON line."""
  limit = int(limit_gib * (1 << 30))
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  import os
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf
  import cfal.heads
  sys.path.insert(0, str(HERE.parent / "tests"))
  from direct_affinity import direct_affinity_loss

  head = cfal.heads.CFAL(num_classes=classes, embedding_dim=DIM,
                         num_centers=CENTERS, sigma=float(DIM), gamma=0.0,
                         seed=0)
  x = tf.random.stateless_normal([BATCH, DIM], seed=[1, 2])
  y = tf.random.stateless_uniform([BATCH], seed=[3, 4], maxval=classes,
                                  dtype=tf.int32)
  baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      if impl == "cfal":
        loss = tf.reduce_mean(head.loss(x, y))
      else:
        loss = tf.reduce_mean(direct_affinity_loss(
            x, y, head.prototypes, head.sigma, head.margin))
    return loss, tape.gradient(loss, head.prototypes)

  start = time.perf_counter()
  try:
    loss, grad = step()
    status, value = "ok", float(loss)
    del grad
  except (tf.errors.ResourceExhaustedError, MemoryError) as error:
    status, value = "out of memory", str(error).splitlines()[0][:120]
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(json.dumps({"impl": impl, "classes": classes, "status": status,
                    "loss": value, "seconds": time.perf_counter() - start,
                    "peak_mib": peak / 1024, "base_mib": baseline / 1024}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--classes", default="10,100,300,1000,10000")
  parser.add_argument("--limit_gib", type=float, default=16.0)
  parser.add_argument("--child", nargs=2, metavar=("IMPL", "CLASSES"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child[0], int(args.child[1]), args.limit_gib)
    return

  rows = []
  for classes in [int(c) for c in args.classes.split(",")]:
    for impl in ("cfal", "direct"):
      out = subprocess.run(
          [sys.executable, __file__, "--child", impl, str(classes),
           "--limit_gib", str(args.limit_gib)],
          capture_output=True, text=True, check=False)
      lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
      if not lines:
        # Killed before it could report: a negative code is the signal.
        how = (f"killed by signal {-out.returncode}" if out.returncode < 0
               else f"exit {out.returncode}")
        row = {"impl": impl, "classes": classes, "status": f"crashed ({how})",
               "peak_mib": float("nan"), "base_mib": float("nan"),
               "loss": out.stderr.strip().splitlines()[-3:]}
      else:
        row = json.loads(lines[-1])
      rows.append(row)
      print(f"C={classes:>6} m={CENTERS} D={DIM} N={BATCH} {impl:>6}: "
            f"{row['status']:>13}  peak {row['peak_mib']:9.0f} MiB "
            f"(process before the step {row['base_mib']:.0f} MiB)",
            flush=True)

  print("\nPeak resident memory of the whole process, and in brackets what the"
        " step added to it (peak - before).\n")
  print("| classes C (M = 3C) | cfal MiB (step) | direct MiB (step) "
        "| step ratio |")
  print("| ---: | ---: | ---: | ---: |")
  by = {(r["impl"], r["classes"]): r for r in rows}
  for classes in sorted({r["classes"] for r in rows}):
    ours, direct = by[("cfal", classes)], by[("direct", classes)]
    ours_step = ours["peak_mib"] - ours["base_mib"]
    ours_s = f"{ours['peak_mib']:.0f} ({ours_step:.0f})"
    if direct["status"] == "ok":
      direct_step = direct["peak_mib"] - direct["base_mib"]
      direct_s = f"{direct['peak_mib']:.0f} ({direct_step:.0f})"
      ratio = f"{direct_step / max(ours_step, 1.0):.0f}x"
    else:
      direct_s = f"{direct['status']} under {args.limit_gib:g} GiB"
      ratio = "-"
    print(f"| {classes} | {ours_s} | {direct_s} | {ratio} |")
  out_dir = HERE / "results"
  out_dir.mkdir(exist_ok=True)
  (out_dir / "affinity_memory.json").write_text(json.dumps(
      {"batch": BATCH, "dim": DIM, "centers": CENTERS,
       "limit_gib": args.limit_gib, "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
