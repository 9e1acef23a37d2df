"""What every benchmark shares: interleaved timing, child processes, results,
and cfal's side of a comparison, built exactly as train.py builds it.

Benchmarks report ratios of configurations measured in the same run,
round-robin, with medians over repeats: the machines are shared, so an
absolute number from one moment means little, a ratio measured side by
side a lot more. Each program writes `bench/results/<name>.json` with the
command that produced it, its markdown tables and its findings (targets met
or missed, by how much); `bench/report.py` gathers them into BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

if TYPE_CHECKING:
  import tensorflow as tf
  from cfal.data.datasets import DataBundle
  from cfal.training.build import Built
  from cfal.training.config import TrainConfig
  from cfal.training.evaluator import Evaluator
  from cfal.training.steps import Steps

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int,
                warmup: int = 1, settle: bool = False
                ) -> dict[str, list[float]]:
  """Times each callable `repeats` times, round-robin; seconds per call.

  Every callable runs `warmup` times first (tracing, caches), untimed.
  Round-robin order spreads a noisy neighbour over all configurations
  instead of penalising whichever ran while it was busy. With `settle`,
  each timed call follows an untimed call of the same configuration, so
  work one configuration leaves behind (an input pipeline's prefetched
  batches) is used up before its own time starts.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      if settle:
        fn()
      began = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - began)
  return times


def median(values: Sequence[float]) -> float:
  return float(statistics.median(values))


def peak_rss_mib() -> float:
  """This process's peak resident memory so far, in MiB (Linux ru_maxrss)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(argv: Sequence[str], *, timeout: float = 1800,
              env: Mapping[str, str] | None = None) -> dict:
  """Runs `python argv...` and returns the last JSON line it printed.

  A child that dies without reporting (killed by the kernel, a signal,
  an abort) comes back as {"status": "crashed (...)"}.
  """
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  full_env.update(env or {})
  try:
    out = subprocess.run([sys.executable, *argv], capture_output=True,
                         text=True, timeout=timeout, env=full_env,
                         check=False, cwd=ROOT)
  except subprocess.TimeoutExpired:
    return {"status": f"timed out after {timeout:.0f} s"}
  lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
  if lines:
    return json.loads(lines[-1])
  how = (f"killed by signal {-out.returncode}" if out.returncode < 0
         else f"exit {out.returncode}")
  tail = " | ".join(out.stderr.strip().splitlines()[-2:])[:300]
  return {"status": f"crashed ({how})", "stderr": tail}


# ---------------------------------------------------------------------------
# cfal's side: what train.py runs. These import TensorFlow when called; a
# program calls `cfal.cli.prepare_environment()` before it loads TensorFlow.


@dataclasses.dataclass
class Trainer:
  """What `cfal.training.runner` wires for a config: the built run, its
  compiled train loop and its training iterator.

  Attributes:
    built: `cfal.training.build.build(config)`: strategy, data, backbone,
      head, optimizer (slots created), counters.
    steps: `Steps` in the step mode `strategy.resolve_step_mode` picks from
      `config.run.step_mode` (an explicit eager/function/xla stays).
    iterator: the training stream from step 0 (`train_iterator`).
  """

  built: "Built"
  steps: "Steps"
  iterator: Iterator

  def run_steps(self, count: int, iterator: Iterator | None = None
                ) -> dict:
    """One compiled call of `count` steps (on `iterator`, else the
    trainer's own); the loop's results as Python numbers."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    results = self.steps.train_loop(iterator or self.iterator,
                                    tf.constant(count))
    return {k: v.numpy().item() for k, v in results.items()}


def build_trainer(config: "TrainConfig", *,
                  strategy: "tf.distribute.Strategy | None" = None,
                  data: "DataBundle | None" = None) -> Trainer:
  """cfal's side of a benchmark: `config` built as train.py builds it.

  `cfal.training.build.build` (with `strategy` and `data` when given, so a
  program loads its data once), then `Steps` and the training iterator
  exactly as `cfal.training.runner` makes them. A mixed-precision config
  needs its `cfal.training.config.dtype_policy` active around this call,
  as train.py has it around the whole run.
  """
  # pylint: disable=import-outside-toplevel
  from cfal.training import build as build_lib
  from cfal.training.steps import steps_for
  from cfal.training.strategy import resolve_step_mode
  built = build_lib.build(config, strategy=strategy, data=data)
  run = config.run
  mode = resolve_step_mode(run.step_mode, built.strategy,
                           deterministic=run.deterministic)
  return Trainer(built=built, steps=steps_for(built, mode),
                 iterator=build_lib.train_iterator(built, 0))


def train_iterator(built: "Built", start_step: int = 0) -> Iterator:
  """A fresh training iterator, the one `cfal.training.runner` makes
  (`build.train_iterator`)."""
  # pylint: disable-next=import-outside-toplevel
  from cfal.training import build as build_lib
  return build_lib.train_iterator(built, start_step)


def evaluator(built: "Built", mode: str = "function") -> "Evaluator":
  """The evaluator train.py validates with, for `built`'s model; keeps no
  embeddings (`EvalResult.confusion` and `.report` only)."""
  # pylint: disable-next=import-outside-toplevel
  from cfal.training.evaluator import evaluator_for
  return evaluator_for(built, keep=0, mode=mode)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                   align: str | None = None) -> str:
  """A GitHub markdown table; `align` is one of l/r per column."""
  align = align or "l" + "r" * (len(headers) - 1)
  rule = ["---:" if a == "r" else "---" for a in align]
  lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def machine() -> dict:
  """Facts that make a result interpretable later."""
  info = {"python": platform.python_version(), "cpus": os.cpu_count(),
          "platform": platform.platform()}
  with contextlib.suppress(OSError):   # not Linux: no CPU model
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        info["cpu"] = line.split(":", 1)[1].strip()
        break
  with contextlib.suppress(ImportError):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    info["tensorflow"] = tf.__version__
  return info


def write_result(name: str, *, command: str, tables: Sequence[dict],
                 findings: Sequence[str], results: object,
                 seconds: float) -> pathlib.Path:
  """Saves one benchmark's outcome for bench/report.py.

  Args:
    name: the program's name, e.g. "loop" for bench/loop.py.
    command: the exact command that reproduces the run.
    tables: [{"title": ..., "markdown": ..., "note": optional text}].
    findings: one sentence per target: met or missed, by how much, why.
    results: the raw numbers (JSON-serialisable).
    seconds: how long the whole benchmark took.
  """
  RESULTS.mkdir(exist_ok=True)
  path = RESULTS / f"{name}.json"
  path.write_text(json.dumps({
      "name": name, "command": command,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "machine": machine(), "seconds": round(seconds, 1),
      "tables": list(tables), "findings": list(findings),
      "results": results}, indent=1, default=float))
  return path


def finish(name: str, *, command: str, tables: Sequence[dict],
           findings: Sequence[str], results: dict, seconds: float,
           load_before: Sequence[float], save: bool,
           timing: str = "") -> pathlib.Path | None:
  """The common end of a benchmark program: prints its tables, findings
  and wall time (with `timing`, e.g. "PNG generation 1.3 s; ", and the
  load average before and now), then, when `save`, writes its result
  (with the load averages added to `results`) and says where."""
  load_after = os.getloadavg()
  for table in tables:
    print(f"\n{table['title']}\n\n{table['markdown']}\n\n{table['note']}")
  print("\n" + "\n".join(findings))
  print(f"\nTotal wall time {seconds:.0f} s ({timing}load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after).")
  if not save:
    print("(--quick: results not saved)")
    return None
  path = write_result(
      name, command=command, tables=tables, findings=findings,
      results={**results, "load_average": [list(load_before),
                                           list(load_after)]},
      seconds=seconds)
  print(f"Wrote {path}.")
  return path
