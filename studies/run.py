"""Runs a study's experiments; finished runs are kept and skipped.

    .venv/bin/python studies/run.py --list
    .venv/bin/python studies/run.py arcface_notebook center_loss
    .venv/bin/python studies/run.py long_tail --only=r100_cfal,r100_softmax --seeds=0
    .venv/bin/python studies/run.py long_tail --dry_run   # the commands only
    .venv/bin/python studies/run.py --device_flags=--gpus=4  # on 4 GPUs
    .venv/bin/python studies/run.py histology  # data: studies/histology/

Each experiment is `studies/<name>/experiment.py` (its runs) with its
flagfiles beside it. Runs go through train.py and eval.py in subprocesses;
`studies/runner.py` says what is kept where. An experiment whose data is
missing (histology) says where to put it: named, nothing runs; in a run of
every experiment, it is skipped. Stop it at any moment: the next
start skips what finished and resumes the run that was cut short. Then
`.venv/bin/python studies/results.py` writes RESULTS.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import pathlib
import sys
import time
from typing import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from studies import experiments, runner  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("experiments", nargs="*", help="experiment names "
                      "(default: every one, in order)")
  parser.add_argument("--list", action="store_true",
                      help="list the experiments and their runs")
  parser.add_argument("--only", default=None, help="comma-separated run "
                      "names or glob patterns ('r100_*') of the "
                      "experiment(s)")
  parser.add_argument("--seeds", default=None, help="comma-separated seeds "
                      "(default: the experiment's)")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the commands, run nothing")
  parser.add_argument("--device_flags", default="", help="train.py/eval.py "
                      "flags saying where the runs execute, added to every "
                      "command, e.g. '--gpus=4'")
  parser.add_argument("--results_dir", default=None, help="keep results "
                      "here instead of studies/results (e.g. an empty "
                      "folder, to redo runs whose results are committed)")
  parser.add_argument("--runs_dir", default=None, help="run directories "
                      "here instead of studies/runs")
  args = parser.parse_args(argv)
  known = experiments.names()
  unknown = [n for n in args.experiments if n not in known]
  if unknown:
    parser.error(f"unknown experiment(s) {', '.join(unknown)}; there are "
                 f"{', '.join(known)}")
  if args.list:
    for name in known:
      experiment = experiments.load(name)
      print(f"{name}: {experiment.title}")
      for run in experiment.runs:
        grid = (f" (tuned: {runner.point_name(run.grid.values)})"
                if run.grid else "")
        print(f"  {run.name}{grid}")
    return 0
  seeds = (None if args.seeds is None else
           [int(s) for s in args.seeds.split(",")])
  only = None if args.only is None else args.only.split(",")
  try:
    ready = runnable(args.experiments or known,
                     explicit=bool(args.experiments), dry_run=args.dry_run)
  except runner.Unavailable as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if only:
    names = {r.name for e in ready for r in e.runs}
    nothing = [o for o in only
               if not any(fnmatch.fnmatchcase(n, o) for n in names)]
    if nothing:
      parser.error(f"--only: no run matches {', '.join(nothing)} "
                   f"(--list names them)")
  dirs = {k: pathlib.Path(v).resolve() for k, v in
          (("results_dir", args.results_dir), ("runs_dir", args.runs_dir))
          if v}
  study = runner.Runner(dry_run=args.dry_run,
                        device_flags=tuple(args.device_flags.split()), **dirs)
  began = time.perf_counter()
  for experiment in ready:
    name = experiment.name
    if only:
      missing = [o for o in only if not any(
          fnmatch.fnmatchcase(r.name, o) for r in experiment.runs)]
      if missing and len(args.experiments) == 1:
        parser.error(f"experiment {name} has no run(s) "
                     f"{', '.join(missing)}")
    try:
      study.run_experiment(experiment, seeds=seeds, only=only)
    except RuntimeError as error:
      print(f"error: {error}", file=sys.stderr)
      return 1
  print(f"Study finished in {time.perf_counter() - began:.0f} s; "
        f"now: .venv/bin/python studies/results.py")
  return 0


def runnable(names: Sequence[str], *, explicit: bool,
             dry_run: bool = False) -> list[runner.Experiment]:
  """The experiments of `names` that can run here, checked before any of
  them starts: one that cannot (its data is missing) stops everything
  when the user named it, and is skipped with a line saying so when the
  whole study runs. A dry run checks nothing (the runner notes it).

  Raises:
    runner.Unavailable: a named experiment cannot run; one line.
  """
  ready = []
  for name in names:
    experiment = experiments.load(name)
    problem = None if dry_run else experiment.problem()
    if problem is None:
      ready.append(experiment)
    elif explicit:
      raise runner.Unavailable(f"{name}: {problem}")
    else:
      print(f"skipping {name}: {problem}", file=sys.stderr)
  return ready


if __name__ == "__main__":
  sys.exit(main())
