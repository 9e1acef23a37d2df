"""Retrieval metrics: the working tree against the last committed baseline.

`cfal.metrics.embedding.retrieval_metrics` (precision@1, R-precision and
MAP@R, every embedding a query against all others) on clustered synthetic
embeddings: D = 128, 10 classes of equal size, fixed seed, at 10k and 70k
embeddings. Two implementations run in the same child process, one call
after the other, on the same data:

- old: the file as of commit `OLD_COMMIT` (read with `git show`), which
  ranks each query alone with a partition and a sort in Python;
- new: the working tree's (the same per-query ranking, with the key block
  allocated once and reused, and an optional progress callback).

Per size and implementation: the time of the call (median over rounds
alternating old-new and new-old, two rounds when a call takes over
`SHORT_CALL_SECONDS`, else `REPEATS`), peak memory (freed heap returned
and the peak-RSS mark reset before each call, as in bench/heads.py; the
figure is the peak minus the RSS before the call), and the scores. The
figures are the ratio old / new and whether the two score dicts are equal
(exactly, `==`). The
same child also times the key matmuls of a few query chunks, scaled to all
N queries: the floor both implementations share.

    .venv/bin/python bench/eval_retrieval.py          # full run, 4-7 min
    .venv/bin/python bench/eval_retrieval.py --quick  # 2k and 5k; not saved
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402
from bench import heads  # noqa: E402

DIM, CLASSES, SEED = 128, 10, 0
FULL_SIZES, QUICK_SIZES = (10000, 70000), (2000, 5000)
# The last commit with the per-query ranking.
OLD_COMMIT = "16d93cd"
IMPLEMENTATIONS = ("old", "new")
CHUNK = 1024                   # retrieval_metrics' default chunk_size
MATMUL_CHUNKS = 2              # query chunks timed for the matmul floor
SHORT_CALL_SECONDS = 5.0       # calls shorter than this are repeated
REPEATS = 3
MIN_ROUNDS = 2               # one old-new and one new-old round at least


def load_embedding_metrics(commit: str | None = None) -> ModuleType:
  """cfal/metrics/embedding.py alone, without its package's __init__.

  `import cfal.metrics` imports TensorFlow (for the classification
  metrics), ~5 s per process; the retrieval code itself is NumPy only.

  Args:
    commit: load the file as of this git commit; None: the working tree.
  """
  relative = "cfal/metrics/embedding.py"
  if commit is None:
    path = common.ROOT / relative
    name = "cfal_embedding_new"
  else:
    source = subprocess.run(["git", "show", f"{commit}:{relative}"],
                            cwd=common.ROOT, capture_output=True, text=True,
                            check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as out:
      out.write(source)
    path = pathlib.Path(out.name)
    name = f"cfal_embedding_{commit}"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if commit is not None:
    path.unlink()
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
  """One size: both implementations' time, peak memory and scores."""
  heads.check_peak_reset()
  modules = {"old": load_embedding_metrics(OLD_COMMIT),
             "new": load_embedding_metrics()}
  x, labels = clustered(size)
  out = {name: {"calls_s": [], "peaks_mib": [], "scores": {}}
         for name in IMPLEMENTATIONS}
  while True:
    # Rounds alternate old-new and new-old (ABBA), so a change of load
    # during the run hits both alike.
    order = IMPLEMENTATIONS[::-1 if len(out["old"]["calls_s"]) % 2 else 1]
    for name in order:
      before = heads.reset_peak()
      began = time.perf_counter()
      scores = modules[name].retrieval_metrics(x, labels, metric="euclidean",
                                               chunk_size=CHUNK)
      out[name]["calls_s"].append(time.perf_counter() - began)
      out[name]["peaks_mib"].append(common.peak_rss_mib() - before)
      out[name]["scores"] = scores
    calls = out["old"]["calls_s"]
    if len(calls) >= REPEATS or (len(calls) >= MIN_ROUNDS
                                 and calls[-1] >= SHORT_CALL_SECONDS):
      break
  for name in IMPLEMENTATIONS:
    out[name]["seconds"] = common.median(out[name]["calls_s"])
    out[name]["peak_mib"] = common.median(out[name]["peaks_mib"])
  return {"size": size, **out,
          "speedup": out["old"]["seconds"] / out["new"]["seconds"],
          "identical": out["old"]["scores"] == out["new"]["scores"],
          "matmul_s": matmul_seconds(x, min(MATMUL_CHUNKS,
                                            -(-size // CHUNK))),
          "keys_mib": CHUNK * size * 8 / (1 << 20)}


def run(sizes: Sequence[int]) -> list[dict]:
  """One child per size, smallest first; a failed child is a status row."""
  rows = []
  for size in sizes:
    began = time.perf_counter()
    out = common.run_child([__file__, "--child", str(size)], timeout=600)
    rows.append(out if "speedup" in out else {"size": size, **out})
    print(f"N={size:>6}: {time.perf_counter() - began:5.1f} s  "
          f"{out.get('status', 'ok')}", flush=True)
  return rows


def table(rows: Sequence[dict]) -> str:
  out = []
  for row in rows:
    if "speedup" not in row:
      out.append([f"{row['size']:,}", row.get("status", "?")] + [""] * 9)
      continue
    old, new = row["old"], row["new"]
    scores = new["scores"]
    out.append([
        f"{row['size']:,}", f"{old['seconds']:.1f}", f"{new['seconds']:.1f}",
        f"{row['speedup']:.1f}x", "yes" if row["identical"] else "NO",
        f"{row['matmul_s'] / new['seconds']:.0%}",
        f"{old['peak_mib']:.0f}", f"{new['peak_mib']:.0f}",
        f"{scores['precision_at_1']:.3f}", f"{scores['r_precision']:.3f}",
        f"{scores['map_at_r']:.3f}"])
  return common.markdown_table(
      ["embeddings N", "old s", "new s", "old / new", "identical scores",
       "matmul share of new", "old peak MiB", "new peak MiB", "P@1",
       "R-precision", "MAP@R"], out)


def findings(rows: Sequence[dict]) -> list[str]:
  ok = [r for r in rows if "speedup" in r]
  if not ok:
    return ["Retrieval metrics: not run."]
  large = ok[-1]
  old, new = large["old"], large["new"]
  floor = large["matmul_s"]
  best = old["seconds"] / floor
  verdict = "met" if large["speedup"] >= 5 else "missed"
  same = all(r["identical"] for r in ok)
  return [
      f"Retrieval metrics at {large['size']:,} x {DIM}: the working tree "
      f"takes {new['seconds']:.0f} s against {old['seconds']:.0f} s for "
      f"commit {OLD_COMMIT}, {large['speedup']:.2f}x; target 5x {verdict}. "
      f"The float64 key matmuls both share take about {floor:.1f} s here, "
      f"so no ranking could be more than {best:.1f}x faster with the same "
      f"keys.",
      (f"Scores identical (==) to commit {OLD_COMMIT}'s at every size."
       if same else f"Scores DIFFER from commit {OLD_COMMIT}'s."),
      f"Peak memory at {large['size']:,}: {new['peak_mib']:.0f} MiB new, "
      f"{old['peak_mib']:.0f} MiB old; one float64 [chunk_size, N] key block "
      f"is {large['keys_mib']:.0f} MiB."]


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
                      f"process, old (commit {OLD_COMMIT}) and new calls "
                      f"in rounds alternating old-new and new-old on the "
                      f"same data; seconds are the median of {MIN_ROUNDS} "
                      f"to {REPEATS} calls ({MIN_ROUNDS} when a call takes "
                      f"over {SHORT_CALL_SECONDS:g} s). Matmul share: "
                      f"the key matmuls of {MATMUL_CHUNKS} chunks, timed "
                      f"alone and scaled to N queries, over the new call's "
                      f"time. Peak: RSS peak of the call minus RSS before "
                      f"it.")}]
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
                 "old_commit": OLD_COMMIT, "rows": rows},
        seconds=time.perf_counter() - began)
    print(f"\nwrote {path.relative_to(common.ROOT)}")
  print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
  main()
