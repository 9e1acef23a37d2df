"""Time and peak memory of the retrieval metrics at 10k, 30k and 70k embeddings.

`cfal.metrics.embedding.retrieval_metrics` (precision@1, R-precision and
MAP@R, every embedding a query against all others) on clustered synthetic
embeddings: D = 128, 10 classes of equal size, fixed seed. Each size runs
in its own child process:

- peak memory: freed heap goes back to the kernel and the peak-RSS mark is
  reset (as in bench/heads.py) after the embeddings are made; the figure is
  `ru_maxrss` after the call minus the RSS before it. It is compared with
  the working memory the function's docstring states (one float64
  `[chunk_size, N]` block of keys plus a float64 copy of the embeddings).
- time: the call, median over `repeats` calls (one at 30k and 70k).
- the matmul floor: the same child times the key matmuls of a few query
  chunks and scales them to all N queries; the rest of the call is the
  per-query ranking in Python and NumPy.

Figures are ratios of sizes or parts measured in the same run: time against
the 10k run and against the N^2 the cost model predicts, memory against the
docstring's estimate, matmul time against the whole call.

    .venv/bin/python bench/eval_retrieval.py          # full run, ~2 min idle
    .venv/bin/python bench/eval_retrieval.py --quick  # 2k, 5k, 10k; not saved
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time
from types import ModuleType
from typing import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402
from bench import heads  # noqa: E402

DIM, CLASSES, SEED = 128, 10, 0
FULL_SIZES, QUICK_SIZES = (10000, 30000, 70000), (2000, 5000, 10000)
CHUNK = 1024                   # retrieval_metrics' default chunk_size
MATMUL_CHUNKS = 2              # query chunks timed for the matmul floor
SHORT_CALL_SECONDS = 5.0       # calls shorter than this are repeated
REPEATS = 3


def load_embedding_metrics() -> ModuleType:
  """cfal/metrics/embedding.py alone, without its package's __init__.

  `import cfal.metrics` imports TensorFlow (for the classification
  metrics), ~5 s per process; the retrieval code itself is NumPy only.
  """
  path = common.ROOT / "cfal" / "metrics" / "embedding.py"
  spec = importlib.util.spec_from_file_location("cfal_embedding", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def clustered(size: int):
  """`size` embeddings `[N, D]` float32 in `CLASSES` Gaussian clusters."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(SEED)
  centers = rng.normal(scale=0.5, size=(CLASSES, DIM))
  labels = np.arange(size) % CLASSES
  x = centers[labels] + rng.normal(size=(size, DIM))
  return x.astype(np.float32), labels


def matmul_seconds(x, chunks: int) -> float:
  """Seconds of the key matmuls for all N queries, from `chunks` of them."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rows = x.astype(np.float64)
  began = time.perf_counter()
  for start in range(0, chunks * CHUNK, CHUNK):
    keys = (-2.0 * rows[start:start + CHUNK]) @ rows.T
    del keys
  per_query = (time.perf_counter() - began) / (chunks * CHUNK)
  return per_query * rows.shape[0]


def child(size: int) -> dict:
  """One size: peak memory and time of the call, and the matmul floor."""
  heads.check_peak_reset()
  embedding = load_embedding_metrics()
  x, labels = clustered(size)
  times, peaks, scores = [], [], {}
  while not times or (len(times) < REPEATS
                      and times[-1] < SHORT_CALL_SECONDS):
    before = heads.reset_peak()
    began = time.perf_counter()
    scores = embedding.retrieval_metrics(x, labels, metric="euclidean",
                                         chunk_size=CHUNK)
    times.append(time.perf_counter() - began)
    peaks.append(common.peak_rss_mib() - before)
  return {"size": size, "seconds": common.median(times), "calls_s": times,
          "peak_mib": common.median(peaks), "peaks_mib": peaks,
          "matmul_s": matmul_seconds(x, min(MATMUL_CHUNKS,
                                            -(-size // CHUNK))),
          "estimate_mib": (CHUNK * size + size * DIM) * 8 / (1 << 20),
          "scores": scores}


def run(sizes: Sequence[int]) -> list[dict]:
  """One child per size, smallest first; a failed child is a status row."""
  rows = []
  for size in sizes:
    began = time.perf_counter()
    out = common.run_child([__file__, "--child", str(size)], timeout=600)
    rows.append(out if "seconds" in out else {"size": size, **out})
    print(f"N={size:>6}: {time.perf_counter() - began:5.1f} s  "
          f"{out.get('status', 'ok')}", flush=True)
  return rows


def table(rows: Sequence[dict]) -> str:
  ok = [r for r in rows if "seconds" in r]
  base = ok[0] if ok else None
  out = []
  for row in rows:
    if "seconds" not in row:
      out.append([f"{row['size']:,}", row.get("status", "?")] + [""] * 7)
      continue
    growth = row["seconds"] / base["seconds"]
    predicted = (row["size"] / base["size"]) ** 2
    scores = row["scores"]
    out.append([
        f"{row['size']:,}", f"{row['seconds']:.1f}",
        f"{growth:.1f}x (N^2: {predicted:.0f}x)",
        f"{row['matmul_s'] / row['seconds']:.0%}",
        f"{row['peak_mib']:.0f}",
        f"{row['peak_mib'] / row['estimate_mib']:.2f}x",
        f"{scores['precision_at_1']:.3f}", f"{scores['r_precision']:.3f}",
        f"{scores['map_at_r']:.3f}"])
  return common.markdown_table(
      ["embeddings N", "seconds", f"time vs {base['size']:,}" if base
       else "time", "matmul share", "peak MiB", "peak vs docstring",
       "P@1", "R-precision", "MAP@R"], out)


def findings(rows: Sequence[dict]) -> list[str]:
  ok = [r for r in rows if "seconds" in r]
  if not ok:
    return ["Retrieval metrics: not run."]
  small, large = ok[0], ok[-1]
  growth = large["seconds"] / small["seconds"]
  predicted = (large["size"] / small["size"]) ** 2
  share = large["matmul_s"] / large["seconds"]
  memory = large["peak_mib"] / large["estimate_mib"]
  return [
      f"Retrieval metrics at {large['size']:,} x {DIM} embeddings take "
      f"{large['seconds']:.0f} s, {growth:.0f}x the {small['size']:,} run "
      f"(N^2 predicts {predicted:.0f}x); the float64 key matmuls are "
      f"{share:.0%} of it, the rest is the per-query partition and sort in "
      f"Python, one query at a time.",
      f"Peak memory at {large['size']:,} embeddings is "
      f"{large['peak_mib']:.0f} MiB, {memory:.2f}x the docstring's "
      f"chunk_size x N x 8 bytes plus a float64 copy of the embeddings "
      f"({large['estimate_mib']:.0f} MiB): "
      + ("as documented." if memory <= 1.5 else
         "more than documented.")]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help=f"sizes {', '.join(map(str, QUICK_SIZES))}")
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args.child)))
    return
  began = time.perf_counter()
  rows = run(QUICK_SIZES if args.quick else FULL_SIZES)
  tables = [{"title": "Retrieval metrics (P@1, R-precision, MAP@R)",
             "markdown": table(rows),
             "note": (f"D = {DIM}, {CLASSES} Gaussian clusters, seed {SEED}, "
                      f"euclidean, chunk_size {CHUNK}; each size in its own "
                      f"process; seconds are the median of up to {REPEATS} "
                      f"calls (one when a call takes over "
                      f"{SHORT_CALL_SECONDS:g} s). Matmul share: the key "
                      f"matmuls of {MATMUL_CHUNKS} chunks, timed alone and "
                      f"scaled to N queries. Peak: RSS peak of the call "
                      f"minus RSS before it.")}]
  found = findings(rows)
  print(f"\n{tables[0]['markdown']}\n\n{tables[0]['note']}\n")
  print("\n".join(f"- {f}" for f in found))
  if args.quick:
    print("\n(--quick: results not saved)")
  else:
    path = common.write_result(
        "eval_retrieval", command=heads.command_line("bench/eval_retrieval.py"),
        tables=tables, findings=found,
        results={"dim": DIM, "classes": CLASSES, "chunk_size": CHUNK,
                 "rows": rows},
        seconds=time.perf_counter() - began)
    print(f"\nwrote {path.relative_to(common.ROOT)}")
  print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
  main()
