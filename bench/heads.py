"""Step time and peak memory of every head relative to softmax; CFAL vs direct.

Heads. For each configuration (C classes, embedding size D; batch N = 256)
one child process builds every head of `cfal.heads.HEADS` the way train.py
does (`cfal.training.build.build_head`: the hyper-parameters of
tests/head_cases.py, long-tailed class counts, each head's default class
weighting, so Focal and CFAL weight by effective number; Affinity and CFAL
with one center per class) and a `tf.function` step per
head: forward and backward of `mean(head.loss(x, y))` with respect to the
embeddings and the head's trainable variables, then `head.update(x, y)`
(center loss's alpha rule; a no-op elsewhere). In that child:

- peak memory, head by head, after tracing: before each measured call,
  freed heap goes back to the kernel (`malloc_trim`) and the process's
  peak-RSS mark is reset to its current RSS (`/proc/self/clear_refs`); the
  figure is `ru_maxrss` after the call minus the RSS before it, median
  over up to three calls. Resetting the mark is what lets one process
  measure nine heads without their peaks mixing.
- step time: all heads round-robin (`bench.common.interleaved`), a sample
  repeating short steps to ~30 ms, median over the rounds.

Every figure is a ratio to the softmax head of the same child process.

Affinity against the direct form (N = 256, m = 3 centers, D = 512): one
child under an address-space limit (`--limit_gib`, default 16 GiB)
measures, the same way, the step memory of CFAL (gamma = 0, no class
weights: the loss of `direct_affinity_loss` below) at every C, then of the
direct form, which materialises `[N, C, m, D]` and `[M, M, D]` (M = C m),
at growing C until it runs out of memory: under the limit a clean error,
not the kernel's OOM killer.

Skipped to keep the full run near 4 minutes on an idle 2-core machine: at
100,000 classes a step takes seconds, so only softmax, ArcFace (the code of
CosFace, SphereFace and the combined margin), center loss and CFAL (the
code of Affinity) run there; Focal (softmax's code and a per-row factor)
is left out too. The timing there is a median of 2 rounds.

    .venv/bin/python bench/heads.py          # full run: results/heads.json
    .venv/bin/python bench/heads.py --quick   # C = 10 and 1,000 at D = 128
    .venv/bin/python bench/heads.py --configs 10000x512 --no-affinity

Only the full run saves its results; --quick and partial runs print them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import pathlib
import re
import resource
import sys
import time
from typing import Callable, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402
from cfal import cli  # noqa: E402  (TensorFlow-free)

BATCH = 256
FULL_CONFIGS = ((10, 128), (10, 512), (1000, 128), (1000, 512),
                (10000, 128), (10000, 512), (100000, 128), (100000, 512))
QUICK_CONFIGS = ((10, 128), (1000, 128))
AFFINITY_DIM, AFFINITY_CENTERS = 512, 3
FULL_AFFINITY_CLASSES = (10, 100, 1000, 10000)
QUICK_AFFINITY_CLASSES = (10, 100, 1000)
TARGET_CLASSES = 10000          # where the memory target is set
TIME_TARGET, MEMORY_TARGET = 1.1, 20.0

# Heads run at 100,000 classes; every other head there is skipped (see
# `skip_reason`), because one step of each costs seconds.
LARGE_CLASSES = 100000
LARGE_HEADS = ("softmax", "arcface", "center_loss", "cfal")
SAME_CODE = {"focal": "softmax", "cosface": "arcface",
             "sphereface": "arcface", "combined_margin": "arcface",
             "affinity": "cfal"}

MIN_RATIO_MIB = 4.0      # below this softmax peak, memory shows in MiB
SAMPLE_SECONDS = 0.03    # a timing sample repeats short steps to this length
TIMING_SECONDS = 4.0     # rough time given to the timed rounds of one config
MIN_REPEATS, MAX_REPEATS, LARGE_C_REPEATS = 3, 15, 2
TRAIN_STEP_HEADS = ("softmax", "cfal")   # the whole-step comparison
TRAIN_STEP_CALL, TRAIN_STEP_REPEATS = 8, 5
MEMORY_CALLS = 3          # measured calls per head, while a call is fast:
SLOW_CALL_SECONDS = 1.0   # one such call is enough


# ---------------------------------------------------------------------------
# Memory of one call, in a process that measures several.


def _status_mib(field: str) -> float:
  """A `/proc/self/status` field (VmRSS, VmHWM, VmSize) in MiB."""
  text = pathlib.Path("/proc/self/status").read_text()
  return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def reset_peak() -> float:
  """Returns freed heap to the kernel, resets the peak-RSS mark; RSS MiB.

  Writing "5" to /proc/self/clear_refs (Linux >= 4.0) sets the high-water
  mark that `ru_maxrss` reports back to the current RSS.
  """
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  pathlib.Path("/proc/self/clear_refs").write_text("5")
  return _status_mib("VmRSS")


def check_peak_reset() -> None:
  """Fails loudly where the kernel ignores the reset (peaks would mix)."""
  rss = reset_peak()
  if common.peak_rss_mib() > rss + 16:
    raise RuntimeError("Resetting the peak RSS via /proc/self/clear_refs had "
                       "no effect on ru_maxrss here; per-head peaks would "
                       "mix. Run each head in its own process instead.")


def call_peak_mib(fn: Callable[[], object],
                  errors: tuple[type, ...] = ()) -> dict:
  """Runs `fn` once: its peak RSS minus the RSS before, seconds, result.

  An exception of a type in `errors` ends the call cleanly: it comes back
  as `error` (its line naming the OOM or shape, else its first line) with
  the peak reached until then.
  """
  before = reset_peak()
  began = time.perf_counter()
  out: dict = {}
  try:
    out["value"] = fn()
  except errors as error:  # pylint: disable=catching-non-exception
    lines = [l for l in str(error).splitlines() if l.strip()]
    useful = [l for l in lines if "OOM" in l or "shape" in l] or lines
    out["error"] = useful[0] if useful else type(error).__name__
  out.update(peak_mib=max(common.peak_rss_mib() - before, 0.0),
             seconds=time.perf_counter() - began)
  return out


# ---------------------------------------------------------------------------
# The heads and their steps (imports TensorFlow: child processes only).


def long_tail_counts(classes: int, n_max: int = 1000,
                     ratio: float = 100.0) -> list[int]:
  """`n_max * ratio^(-c/(C-1))`, at least 1: the CIFAR-LT class sizes."""
  return [max(1, round(n_max * ratio ** (-c / (classes - 1))))
          for c in range(classes)]


def head_options(name: str, dim: int) -> dict:
  """Options of one registry head (tests/head_cases.py's), as
  `--head_args` would give them."""
  return {
      "focal": {"gamma": 2.0},
      "arcface": {"scale": 16.0, "margin": 0.5},
      "cosface": {"scale": 16.0, "margin": 0.35},
      "sphereface": {"scale": 16.0, "margin": 1.35},
      "combined_margin": {"m1": 1.0, "m2": 0.3, "m3": 0.2, "scale": 16.0},
      "center_loss": {"alpha": 0.5, "center_weight": 0.1},
      "affinity": {"sigma": float(dim), "margin": 0.75},
      "cfal": {"sigma": float(dim), "gamma": 2.0, "beta": 0.999},
  }.get(name, {})


def build_head(name: str, classes: int, dim: int, options: dict,
               class_counts: Sequence[int]):
  """The head train.py builds for `--head=name` with these options and
  class counts (`cfal.training.build.build_head`, seed 0)."""
  # pylint: disable=import-outside-toplevel
  from cfal.training import build as build_lib
  from cfal.training.config import ModelConfig, TrainConfig
  config = TrainConfig(model=ModelConfig(head=name, embedding_dim=dim,
                                         head_args=options))
  return build_lib.build_head(config, class_counts, classes)


def skip_reason(name: str, classes: int, dim: int) -> str | None:
  """Why a head is not run at (classes, dim), or None."""
  if classes >= LARGE_CLASSES and name not in LARGE_HEADS:
    like = SAME_CODE.get(name, "softmax")
    return (f"skipped at {classes:,} classes for the time budget: the code "
            f"path of {like}")
  return None


def make_inputs(classes: int, dim: int):
  """Fixed-seed embeddings `[N, D]` and labels `[N]`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  x = tf.random.stateless_normal([BATCH, dim], seed=[1, 2])
  y = tf.random.stateless_uniform([BATCH], seed=[3, 4], maxval=classes,
                                  dtype=tf.int32)
  return x, y


def direct_affinity_loss(embeddings, labels, prototypes, sigma, margin,
                         spread_weight=1.0):
  """Per-example L_mm + spread_weight * R_w, the direct (authors') way.

  Materialises the `[N, C, m, D]` difference tensor for the distances and
  the `[M, M, D]` one for the spread regulariser, exactly as the formula
  reads (the form tests/direct_affinity.py checks `Affinity` against).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  w = prototypes if prototypes.shape.rank == 3 else prototypes[:, None, :]
  diff = embeddings[:, None, None, :] - w[None]            # [N, C, m, D]
  d = tf.reduce_max(tf.exp(-tf.reduce_sum(tf.square(diff), -1) / sigma),
                    axis=-1)
  onehot = tf.one_hot(labels, d.shape[-1], dtype=d.dtype)
  d_y = tf.reduce_sum(d * onehot, -1, keepdims=True)
  l_mm = tf.reduce_sum(tf.nn.relu(margin + d - d_y) * (1 - onehot), -1)
  flat = tf.reshape(prototypes, [-1, prototypes.shape[-1]])
  m = flat.shape[0]
  sq = tf.reduce_sum(tf.square(flat[:, None, :] - flat[None, :, :]), -1)
  upper = (tf.linalg.band_part(tf.ones_like(sq), 0, -1)
           - tf.eye(m, dtype=sq.dtype))
  pairs = m * (m - 1) / 2
  mean = tf.reduce_sum(sq * upper) / pairs
  spread = tf.reduce_sum(tf.square(sq - mean) * upper) / pairs
  return l_mm + spread_weight * spread


def compiled_step(head, loss_fn=None):
  """A tf.function: loss, gradients w.r.t. x and the head, then `update`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  loss_fn = loss_fn or head.loss
  variables = list(head.trainable_variables)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_mean(loss_fn(x, y))
    grads = tape.gradient(loss, [x] + variables)
    head.update(x, y)
    return loss, grads

  return step


def repeated(fn: Callable[[], object], calls: int) -> Callable[[], None]:
  """`fn` called `calls` times (one timing sample of a short step)."""
  def run() -> None:
    for _ in range(calls):
      fn()
  return run


def measure_head(step, x, y, errors: tuple[type, ...] = ()) -> dict:
  """Traces `step`, then measures the peak memory of its first calls.

  The figure is the median of up to `MEMORY_CALLS` calls (only the first
  where it takes over `SLOW_CALL_SECONDS`; graph optimisation on the first
  call adds a few MiB, which only shows at small C). The order in which
  TensorFlow's inter-op threads run independent ops changes which tensors
  are alive at once, so the peak varies by some 20% from call to call. A
  call failing with one of `errors` gives status "out of memory".
  """
  began = time.perf_counter()
  graph = step.get_concrete_function(x, y).graph     # tracing, untimed
  row = {"status": "ok", "trace_s": time.perf_counter() - began,
         "graph_ops": len(graph.get_operations()), "peaks_mib": [],
         "calls_s": []}
  while len(row["calls_s"]) < MEMORY_CALLS and (
      not row["calls_s"] or row["calls_s"][-1] < SLOW_CALL_SECONDS):
    call = call_peak_mib(lambda: step(x, y)[0], errors)
    row["peaks_mib"].append(call["peak_mib"])
    row["calls_s"].append(call["seconds"])
    if "error" in call:
      row.update(status="out of memory", error=call["error"][:160])
      break
    row["loss"] = float(call["value"])
  row["peak_mib"] = common.median(row["peaks_mib"])
  return row


def timing_repeats(round_seconds: float, classes: int, quick: bool) -> int:
  """Rounds of interleaved samples: about `TIMING_SECONDS` of them, at
  least `MIN_REPEATS` (`LARGE_C_REPEATS` at 100,000 classes, where one
  round takes many seconds)."""
  if quick:
    return MIN_REPEATS
  if classes >= LARGE_CLASSES:
    return LARGE_C_REPEATS
  return max(MIN_REPEATS, min(MAX_REPEATS,
                              int(TIMING_SECONDS / max(round_seconds, 1e-6))))


def child_heads(classes: int, dim: int, quick: bool) -> dict:
  """Memory head by head, then interleaved timing; one (C, D)."""
  from cfal.heads import registry  # pylint: disable=import-outside-toplevel
  check_peak_reset()
  x, y = make_inputs(classes, dim)
  counts = long_tail_counts(classes)
  rows: dict[str, dict] = {}
  samples: dict[str, Callable[[], None]] = {}
  for name in registry.HEADS:
    reason = skip_reason(name, classes, dim)
    if reason:
      rows[name] = {"status": "skipped", "reason": reason}
      continue
    step = compiled_step(build_head(name, classes, dim,
                                    head_options(name, dim), counts))
    row = rows[name] = measure_head(step, x, y)
    # The last memory call was warm: it sets how many calls make a sample.
    row["calls_per_sample"] = max(1, min(100, round(SAMPLE_SECONDS
                                                    / row["calls_s"][-1])))
    samples[name] = repeated(lambda s=step: s(x, y), row["calls_per_sample"])
  repeats = timing_repeats(
      sum(rows[n]["calls_per_sample"] * rows[n]["calls_s"][-1]
          for n in samples), classes, quick)
  times = common.interleaved(samples, repeats, warmup=0)
  for name, sample_times in times.items():
    per_call = [t / rows[name]["calls_per_sample"] for t in sample_times]
    rows[name].update(step_s=common.median(per_call), samples_s=per_call)
  return {"classes": classes, "dim": dim, "repeats": repeats, "heads": rows}


def child_affinity(classes_list: Sequence[int], limit_gib: float) -> None:
  """CFAL at every C, then the direct form until it fails; JSON lines.

  Prints the cumulative rows after every measurement, so a crash (which
  prints nothing) still leaves the rows before it in the last line.
  """
  limit = int(limit_gib * (1 << 30))
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  check_peak_reset()
  oom = (tf.errors.ResourceExhaustedError, MemoryError)

  def measure(impl: str, classes: int) -> dict:
    # gamma = 0 and no class weights: exactly the direct form's loss.
    head = build_head("cfal", classes, AFFINITY_DIM, {
        "num_centers": AFFINITY_CENTERS, "sigma": float(AFFINITY_DIM),
        "gamma": 0.0, "class_weighting": "none"}, long_tail_counts(classes))

    def direct(x, y):
      return direct_affinity_loss(x, y, head.prototypes, head.sigma,
                                  head.margin)

    step = compiled_step(head, direct if impl == "direct" else head.loss)
    vm_before = _status_mib("VmSize")
    row = measure_head(step, *make_inputs(classes, AFFINITY_DIM), oom)
    return {"impl": impl, "classes": classes, "vm_before_mib": vm_before,
            **row}

  rows: list[dict] = []
  for classes in classes_list:
    rows.append(measure("cfal", classes))
    print(json.dumps({"rows": rows}), flush=True)
  for classes in classes_list:
    rows.append(measure("direct", classes))
    print(json.dumps({"rows": rows}), flush=True)
    if rows[-1]["status"] != "ok":
      break


def child_train_step(quick: bool) -> dict:
  """The default recipe's whole train step with each of `TRAIN_STEP_HEADS`.

  Built as train.py builds it (`bench.common.build_trainer`, i.e.
  `cfal.training.build`: seed CNN, embedding 64, batch 128, Adam with
  cosine decay), fed one real Fashion-MNIST batch from memory so input
  costs nothing; calls of `TRAIN_STEP_CALL` steps, the heads round-robin,
  median over the rounds.
  """
  import dataclasses  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  # pylint: disable=import-outside-toplevel
  from cfal.data import pipeline
  from cfal.training import build as build_lib
  from cfal.training.config import ModelConfig, TrainConfig
  base = TrainConfig()
  strategy = build_lib.build_strategy(base)
  data = build_lib.load_data(base)
  batch = next(iter(pipeline.train_dataset(
      data.source, data.train_indices,
      global_batch_size=base.run.batch_size, seed=1)))
  batches = iter(strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(batch).repeat()))
  steps = tf.constant(TRAIN_STEP_CALL)
  calls, rows = {}, {}
  for name in TRAIN_STEP_HEADS:
    config = dataclasses.replace(base, model=ModelConfig(head=name))
    train = common.build_trainer(config, strategy=strategy,
                                 data=data).steps
    began = time.perf_counter()
    train.train_loop(batches, steps)            # tracing and warm-up
    rows[name] = {"trace_s": time.perf_counter() - began}
    calls[name] = lambda t=train: train_loss(t, batches, steps)
  repeats = MIN_REPEATS if quick else TRAIN_STEP_REPEATS
  times = common.interleaved(calls, repeats, warmup=0)
  for name, samples in times.items():
    per_step = [t / TRAIN_STEP_CALL for t in samples]
    rows[name].update(step_s=common.median(per_step), samples_s=per_step)
  return {"batch": base.run.batch_size, "backbone": base.model.backbone,
          "embedding_dim": base.model.embedding_dim,
          "steps_per_call": TRAIN_STEP_CALL, "repeats": repeats,
          "heads": rows}


def train_loss(train, batches, steps) -> float:
  """One compiled call of `steps` train steps; its mean loss."""
  return float(train.train_loop(batches, steps)["loss"])


# ---------------------------------------------------------------------------
# The parent: children one after another, then tables and findings.


def children_cpu_seconds() -> float:
  """CPU seconds (user + system) of this process's finished children."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def timed_child(argv: Sequence[str], label: str) -> dict:
  """`common.run_child` plus its wall and CPU seconds, printed."""
  began, cpu = time.perf_counter(), children_cpu_seconds()
  out = common.run_child(argv, timeout=900)
  out["wall_s"] = time.perf_counter() - began
  out["cpu_s"] = children_cpu_seconds() - cpu
  print(f"{label}: {out['wall_s']:5.1f} s wall, {out['cpu_s']:5.1f} s CPU  "
        f"{out.get('status', 'ok')}", flush=True)
  return out


def run_heads(configs: Sequence[tuple[int, int]], quick: bool) -> list[dict]:
  """One child per (C, D); a child that fails becomes a status row."""
  results = []
  for classes, dim in configs:
    argv = [__file__, "--child", "heads", "--configs", f"{classes}x{dim}"]
    out = timed_child(argv + (["--quick"] if quick else []),
                      f"heads C={classes:>6} D={dim}")
    if "heads" not in out:
      out = {"classes": classes, "dim": dim, **out}
    results.append(out)
  return results


def run_affinity(classes_list: Sequence[int], limit_gib: float) -> list[dict]:
  """The CFAL-vs-direct child; a measurement it died in is marked so."""
  argv = [__file__, "--child", "affinity", "--limit_gib", str(limit_gib),
          "--affinity_classes", ",".join(str(c) for c in classes_list)]
  out = timed_child(argv, "affinity vs direct")
  rows = out.get("rows", [])
  expected = [("cfal", c) for c in classes_list]
  expected += [("direct", c) for c in classes_list]
  done = {(r["impl"], r["classes"]) for r in rows}
  failed = any(r["status"] != "ok" for r in rows if r["impl"] == "direct")
  missing = [e for e in expected if e not in done]
  if missing and not (failed and missing[0][0] == "direct"):
    impl, classes = missing[0]
    rows.append({"impl": impl, "classes": classes,
                 "status": out.get("status", "crashed before reporting"),
                 "stderr": out.get("stderr", "")})
  return rows


def run_train_step(quick: bool) -> dict:
  """The whole-train-step child."""
  argv = [__file__, "--child", "train_step"] + (["--quick"] if quick else [])
  return timed_child(argv, "whole train step, softmax vs cfal")


def _span(values: Sequence[int]) -> str:
  low, high = min(values), max(values)
  return str(low) if low == high else f"{low}-{high}"


def _times(value: float, digits: int = 2) -> str:
  return f"{value:.{digits}f}x"


def time_cell(row: dict, base: dict | None) -> str:
  """Step time as a ratio to softmax; softmax's own time for scale."""
  if base is None or base.get("status") != "ok":
    return f"{row['step_s'] * 1e3:.1f} ms"
  if row is base:
    return f"1 ({row['step_s'] * 1e3:.1f} ms)"
  return _times(row["step_s"] / base["step_s"])


def memory_cell(row: dict, base: dict | None) -> str:
  """Peak step memory as a ratio to softmax, or MiB where softmax's is tiny."""
  if base is None or base.get("status") != "ok" or (
      base["peak_mib"] < MIN_RATIO_MIB):
    return f"{row['peak_mib']:.1f} MiB"
  if row is base:
    return f"1 ({row['peak_mib']:.0f} MiB)"
  return _times(row["peak_mib"] / base["peak_mib"], 1)


def heads_table(results: Sequence[dict],
                cell: Callable[[dict, dict | None], str]) -> str:
  """Rows: heads; columns: (C, D); cells: `cell(row, softmax_row)`."""
  names: list[str] = []
  for result in results:
    names += [n for n in result.get("heads", {}) if n not in names]
  headers = ["head"] + [f"{r['classes']:,} x {r['dim']}" for r in results]
  rows = []
  for name in names:
    cells = [name]
    for result in results:
      row = result.get("heads", {}).get(name)
      if row is None:
        cells.append(result.get("status", "not run").split(" (")[0])
      elif row["status"] != "ok":
        cells.append(row["status"])
      else:
        cells.append(cell(row, result["heads"].get("softmax")))
    rows.append(cells)
  return common.markdown_table(headers, rows)


def direct_bytes(classes: int) -> tuple[float, float]:
  """Bytes of the direct form's `[N, C, m, D]` and `[M, M, D]` float32."""
  m = classes * AFFINITY_CENTERS
  return (4.0 * BATCH * m * AFFINITY_DIM, 4.0 * m * m * AFFINITY_DIM)


def _size(num_bytes: float) -> str:
  for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
    if num_bytes >= size:
      return f"{num_bytes / size:.1f} {unit}"
  return f"{num_bytes / 1024:.0f} KiB"


def affinity_table(rows: Sequence[dict], limit_gib: float) -> str:
  by = {(r["impl"], r["classes"]): r for r in rows}
  out = []
  for classes in sorted({r["classes"] for r in rows}):
    ours, direct = by.get(("cfal", classes)), by.get(("direct", classes))
    ours_s = (f"{ours['peak_mib']:.0f}" if ours and ours["status"] == "ok"
              else (ours or {}).get("status", "not run"))
    if direct is None:
      direct_s, ratio = "not run: failed at a smaller C", "-"
    elif direct["status"] == "ok":
      direct_s = f"{direct['peak_mib']:.0f}"
      ratio = (_times(direct["peak_mib"] / max(ours["peak_mib"], 1.0), 0)
               if ours and ours["status"] == "ok" else "-")
    else:
      direct_s, ratio = f"{direct['status']} under {limit_gib:g} GiB", "-"
    big = direct_bytes(classes)
    out.append([f"{classes:,}", f"{classes * AFFINITY_CENTERS:,}", ours_s,
                direct_s, ratio, f"{_size(big[0])} + {_size(big[1])}"])
  return common.markdown_table(
      ["classes C", "prototypes M", "CFAL step MiB", "direct step MiB",
       "direct / CFAL", "direct's [N,C,m,D] + [M,M,D]"], out)


def _ratio_to_softmax(result: dict, name: str) -> float | None:
  heads = result.get("heads", {})
  row, base = heads.get(name, {}), heads.get("softmax", {})
  if row.get("status") != "ok" or base.get("status") != "ok":
    return None
  return row["step_s"] / base["step_s"]


def train_step_table(whole: dict) -> str:
  heads = whole["heads"]
  base = heads["softmax"]["step_s"]
  return common.markdown_table(
      ["head", "train step", "x softmax", "tracing"],
      [[name, f"{row['step_s'] * 1e3:.1f} ms", f"{row['step_s'] / base:.3f}",
        f"{row['trace_s']:.1f} s"] for name, row in heads.items()],
      align="lrrr")


def whole_step_ratio(whole: dict) -> float | None:
  heads = whole.get("heads", {})
  if "cfal" not in heads or "softmax" not in heads:
    return None
  return heads["cfal"]["step_s"] / heads["softmax"]["step_s"]


def time_finding(results: Sequence[dict], whole: dict) -> str:
  """The target: CFAL step time within 1.1x of softmax at 10 classes."""
  small = [r for r in results if r["classes"] == 10
           and _ratio_to_softmax(r, "cfal") is not None]
  if not small:
    return "CFAL step time at 10 classes: not run."
  ratios = [_ratio_to_softmax(r, "cfal") for r in small]
  worst = max(ratios)
  verdict = ("met" if worst <= TIME_TARGET
             else f"missed by {worst / TIME_TARGET:.2f}x")
  each = " and ".join(f"{ratio:.2f}x (D={r['dim']})"
                      for ratio, r in zip(ratios, small))
  heads = small[0]["heads"]
  center = [_ratio_to_softmax(r, "center_loss") for r in small]
  center_s = " and ".join(f"{c:.2f}x" for c in center if c is not None)
  return (f"CFAL's step at 10 classes takes {each} the softmax step's "
          f"time: target <= {TIME_TARGET}x {verdict}. There a step is about "
          f"a millisecond of fixed costs: the function call, a few "
          f"microseconds for each of CFAL's {heads['cfal']['graph_ops']} ops "
          f"against softmax's {heads['softmax']['graph_ops']}, and, growing "
          f"with D, element-wise passes over the [N, D] embeddings (the "
          f"shift, the exact own-class distances) that softmax does not "
          f"make; center loss, whose extra work is such a pass, takes "
          f"{center_s}.{whole_step_text(small, whole)}")


def whole_step_text(small: Sequence[dict], whole: dict) -> str:
  """What the head's fixed cost amounts to in a real train step."""
  ratio = whole_step_ratio(whole)
  if ratio is None:
    return ""
  heads = whole["heads"]
  extra_ms = (heads["cfal"]["step_s"] - heads["softmax"]["step_s"]) * 1e3
  head_ms = [(r["heads"]["cfal"]["step_s"] - r["heads"]["softmax"]["step_s"])
             * 1e3 for r in small]
  verdict = ("within the target" if ratio <= TIME_TARGET
             else f"over the target by {ratio / TIME_TARGET:.2f}x")
  return (f" In the step a user runs, the default recipe's whole train step "
          f"({whole['backbone']}, batch {whole['batch']}), CFAL takes "
          f"{ratio:.3f}x softmax's time ({extra_ms:+.1f} ms of "
          f"{heads['softmax']['step_s'] * 1e3:.0f} ms; the head-only "
          f"difference above is {', '.join(f'{m:.2f}' for m in head_ms)} ms): "
          f"{verdict}.")


def memory_finding(rows: Sequence[dict], limit_gib: float) -> str:
  """The target: CFAL >= 20x less step memory than the direct form."""
  by = {(r["impl"], r["classes"]): r for r in rows}
  ours = by.get(("cfal", TARGET_CLASSES))
  where = (f"CFAL at {TARGET_CLASSES:,} classes x {AFFINITY_CENTERS} centers "
           f"x {AFFINITY_DIM} dims")
  if not ours or ours["status"] != "ok":
    return f"{where}: not run."
  cfal_mib = max(ours["peak_mib"], 1.0)
  direct = by.get(("direct", TARGET_CLASSES))
  ran = [r for r in rows if r["impl"] == "direct" and r["status"] == "ok"
         and ("cfal", r["classes"]) in by]
  if direct and direct["status"] == "ok":
    ratio = direct["peak_mib"] / cfal_mib
    evidence = (f"the direct form's step needs {direct['peak_mib']:.0f} MiB "
                f"({ratio:.0f}x)")
  else:
    failed = [r for r in rows if r["impl"] == "direct" and r["status"] != "ok"]
    if not failed:
      return f"{where}: the direct form was not run."
    first = min(failed, key=lambda r: r["classes"])
    room = limit_gib * 1024 - first.get("vm_before_mib", 0.0)
    tensor = direct_bytes(TARGET_CLASSES)[1]
    ratio = tensor / (1 << 20) / cfal_mib
    evidence = (f"the direct form ran out of memory under a {limit_gib:g} "
                f"GiB address-space limit already at {first['classes']:,} "
                f"classes, with {room / 1024:.1f} GiB of room (> "
                f"{room / cfal_mib:.0f}x), and at {TARGET_CLASSES:,} classes "
                f"its [M, M, D] tensor alone is {_size(tensor)} "
                f"({ratio:,.0f}x)")
    if ran:
      last = max(ran, key=lambda r: r["classes"])
      there = last["peak_mib"] / max(by[("cfal", last["classes"])]["peak_mib"],
                                     1.0)
      evidence += (f"; where both ran, at {last['classes']:,} classes, the "
                   f"direct step took {there:.0f}x CFAL's memory")
  verdict = ("met" if ratio >= MEMORY_TARGET
             else f"missed by {MEMORY_TARGET / ratio:.1f}x")
  return (f"{where}: the step needs {ours['peak_mib']:.0f} MiB; {evidence}: "
          f"target >= {MEMORY_TARGET:.0f}x less {verdict}.")


def report(results: Sequence[dict], affinity: Sequence[dict], whole: dict,
           limit_gib: float) -> tuple[list[dict], list[str]]:
  """Tables and findings for bench.common.write_result."""
  rounds = [r["repeats"] for r in results if "repeats" in r] or [0]
  memory_protocol = (
      f"Peak RSS during a step minus RSS just before it: median over up to "
      f"{MEMORY_CALLS} calls after tracing (only the first where a call "
      f"takes over {SLOW_CALL_SECONDS:g} s). Freed heap goes back to the "
      f"kernel and the peak mark is reset before each call, so one process "
      f"measures many steps without their peaks mixing; a peak varies by "
      f"~20% with the order ops run in.")
  tables = [
      {"title": "Step time relative to softmax",
       "markdown": heads_table(results, time_cell),
       "note": (f"Forward + backward of the mean loss w.r.t. the embeddings "
                f"and the head's variables, plus `update`, in one "
                f"tf.function; batch {BATCH}; columns are classes x "
                f"embedding dims, each measured in its own process with the "
                f"heads interleaved round-robin; median over "
                f"{_span(rounds)} rounds (fewer at large C), a sample "
                f"repeating short steps "
                f"to ~{SAMPLE_SECONDS * 1e3:.0f} ms; tracing excluded. The "
                f"softmax row gives its own time for scale. Skipped, for the "
                f"time budget: at {LARGE_CLASSES:,} classes only "
                f"{', '.join(LARGE_HEADS)} run (the others share the code "
                f"of one of them).")},
      {"title": "Peak step memory relative to softmax",
       "markdown": heads_table(results, memory_cell),
       "note": (f"{memory_protocol} The softmax row gives its own MiB; where "
                f"it is under {MIN_RATIO_MIB:g} MiB the column shows MiB, "
                f"not ratios.")}]
  if affinity:
    tables.append({
        "title": (f"CFAL against the direct affinity formulation "
                  f"(N = {BATCH}, m = {AFFINITY_CENTERS}, "
                  f"D = {AFFINITY_DIM})"),
        "markdown": affinity_table(affinity, limit_gib),
        "note": (f"{memory_protocol} One process under a {limit_gib:g} GiB "
                 f"address-space limit; CFAL with gamma = 0 and no class "
                 f"weights computes the same loss as the direct form, which "
                 f"runs at growing C until its first failure. The last "
                 f"column is what the direct form must hold, computed.")})
  if whole.get("heads"):
    tables.append({
        "title": "The whole train step: CFAL against softmax",
        "markdown": train_step_table(whole),
        "note": (f"Default recipe ({whole['backbone']}, embedding "
                 f"{whole['embedding_dim']}, batch {whole['batch']}, Adam) as "
                 f"train.py builds it, fed one real Fashion-MNIST batch from "
                 f"memory; calls of {whole['steps_per_call']} steps, the "
                 f"heads round-robin, median over {whole['repeats']} rounds; "
                 f"tracing excluded.")})
  findings = [time_finding(results, whole)]
  if affinity:
    findings.append(memory_finding(affinity, limit_gib))
  return tables, findings


def parse_configs(text: str) -> list[tuple[int, int]]:
  """"10x128,1000x512" -> [(10, 128), (1000, 512)]."""
  pairs = [item.split("x") for item in text.split(",") if item]
  return [(int(c), int(d)) for c, d in pairs]


def command_line(script: str) -> str:
  """The command that reruns this program, the venv's python relative."""
  python = pathlib.Path(sys.executable)
  with contextlib.suppress(ValueError):   # a python outside the repo
    python = python.relative_to(common.ROOT)
  return " ".join([str(python), script, *sys.argv[1:]])


def main() -> None:
  cli.prepare_environment()   # before any child loads TensorFlow
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="C = 10 and 1,000 at D = 128; direct up to 1,000")
  parser.add_argument("--configs", help="e.g. 10x128,10000x512")
  parser.add_argument("--affinity_classes", help="e.g. 10,100,1000,10000")
  parser.add_argument("--no-affinity", dest="affinity", action="store_false")
  parser.add_argument("--limit_gib", type=float, default=16.0,
                      help="address-space limit of the affinity child")
  parser.add_argument("--no-train-step", dest="train_step",
                      action="store_false")
  parser.add_argument("--child", choices=("heads", "affinity", "train_step"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  configs = (parse_configs(args.configs) if args.configs
             else QUICK_CONFIGS if args.quick else FULL_CONFIGS)
  affinity_classes = (
      [int(c) for c in args.affinity_classes.split(",")]
      if args.affinity_classes
      else QUICK_AFFINITY_CLASSES if args.quick else FULL_AFFINITY_CLASSES)
  if args.child == "heads":
    print(json.dumps(child_heads(*configs[0], args.quick)))
    return
  if args.child == "affinity":
    child_affinity(affinity_classes, args.limit_gib)
    return
  if args.child == "train_step":
    print(json.dumps(child_train_step(args.quick)))
    return

  began = time.perf_counter()
  results = run_heads(configs, args.quick)
  affinity = (run_affinity(affinity_classes, args.limit_gib)
              if args.affinity else [])
  whole = run_train_step(args.quick) if args.train_step else {}
  tables, findings = report(results, affinity, whole, args.limit_gib)
  for table in tables:
    print(f"\n{table['title']}\n\n{table['markdown']}\n\n{table['note']}")
  print("\n" + "\n".join(f"- {f}" for f in findings))
  if (args.quick or args.configs or args.affinity_classes
      or not args.affinity or not args.train_step):
    print("\n(a --quick or partial run: results not saved)")
  else:
    path = common.write_result(
        "heads", command=command_line("bench/heads.py"), tables=tables,
        findings=findings, results={"batch": BATCH, "configs": results,
                                    "affinity": affinity, "train_step": whole,
                                    "limit_gib": args.limit_gib},
        seconds=time.perf_counter() - began)
    print(f"\nwrote {path.relative_to(common.ROOT)}")
  print(f"total {time.perf_counter() - began:.0f} s wall; the children used "
        f"{children_cpu_seconds():.0f} s of CPU")


if __name__ == "__main__":
  main()
