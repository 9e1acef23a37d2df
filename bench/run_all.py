"""Runs every benchmark program one after another, then bench/report.py.

Each program runs as its own subprocess with a time limit; a failure or a
timeout is reported and the next program still runs, so one broken
benchmark does not hide the others (its section of BENCHMARKS.md then
keeps its last results, or says "not run"). Programs run in the report's
order (`bench.report.ORDER`), then any other `bench/*.py` that is not a
helper. Prints each program's wall time and the total.

    .venv/bin/python bench/run_all.py          # what `make bench` runs
    .venv/bin/python bench/run_all.py --quick  # --quick where a program has it
    .venv/bin/python bench/run_all.py --only heads,eval_retrieval
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time
from typing import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402
from bench.report import ORDER  # noqa: E402

# Helpers, and the soak: a reliability check (tests/test_reliability.py runs
# it too) that would take a sixth of the 30 minutes `make bench` may use.
NOT_PROGRAMS = {"__init__", "common", "report", "run_all", "soak"}
TIMEOUT_MINUTES = 20.0


def programs(only: Sequence[str] | None) -> list[str]:
  """Benchmark names to run: ORDER's that exist, then the others."""
  found = {p.stem for p in common.HERE.glob("*.py")} - NOT_PROGRAMS
  names = [n for n in ORDER if n in found]
  names += sorted(found - set(names))
  if only:
    unknown = set(only) - found
    if unknown:
      raise SystemExit(f"No benchmark program named {sorted(unknown)}; "
                       f"there are {names}.")
    names = [n for n in names if n in only]
  return names


def takes_quick(name: str) -> bool:
  """Whether bench/<name>.py has a --quick flag (bench/soak.py has not)."""
  return '"--quick"' in (common.HERE / f"{name}.py").read_text()


def run(name: str, extra: Sequence[str], timeout: float) -> tuple[str, float]:
  """Runs bench/<name>.py; returns (outcome, seconds). Output streams on."""
  print(f"\n=== bench/{name}.py {' '.join(extra)}".rstrip(), flush=True)
  began = time.perf_counter()
  try:
    code = subprocess.run([sys.executable, str(common.HERE / f"{name}.py"),
                           *extra], cwd=common.ROOT, timeout=timeout,
                          check=False).returncode
    outcome = "ok" if code == 0 else f"failed (exit {code})"
  except subprocess.TimeoutExpired:
    outcome = f"timed out after {timeout / 60:.0f} min"
  seconds = time.perf_counter() - began
  print(f"=== bench/{name}.py: {outcome} in {seconds:.0f} s", flush=True)
  return outcome, seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="pass --quick to every program")
  parser.add_argument("--only", help="comma-separated names, e.g. heads,loop")
  parser.add_argument("--timeout_minutes", type=float,
                      default=TIMEOUT_MINUTES, help="per program")
  args = parser.parse_args()
  began = time.perf_counter()
  only = args.only.split(",") if args.only else None
  extra = ["--quick"] if args.quick else []
  outcomes = [(name, *run(name, extra if takes_quick(name) else [],
                          args.timeout_minutes * 60))
              for name in programs(only)]
  report, _ = run("report", [], 60)
  print("\n" + common.markdown_table(
      ["program", "outcome", "seconds"],
      [[n, o, f"{s:.0f}"] for n, o, s in outcomes] + [["report", report, ""]],
      align="llr"))
  total = time.perf_counter() - began
  print(f"\nTotal wall time: {total:.0f} s ({total / 60:.1f} min)")
  if any(o != "ok" for _, o, _ in outcomes) or report != "ok":
    sys.exit(1)


if __name__ == "__main__":
  main()
