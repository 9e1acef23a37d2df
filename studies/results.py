"""Writes RESULTS.md and its pictures (docs/*.png) from the kept results.

    .venv/bin/python studies/results.py

Every number comes from `studies/results/<experiment>/<run>/seed-<s>/`,
which `studies/run.py` writes from the runs' own report.json files; an
experiment with no finished run says how to run it. Nothing here trains.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from studies import experiments, tables  # noqa: E402
from studies.runner import ROOT  # noqa: E402

INTRO = """\
# Results

What cfal's heads do on real data, measured with the product itself: every
run is `train.py` and then `eval.py`, started by `studies/run.py`, and
every number below is read from those runs' `report.json` files by
`studies/results.py`, which wrote this page. Mean ± sample standard
deviation over seeds; the seed also draws the validation split. Wall times
are on this project's machine: 2 shared CPU cores, no GPU (load average
recorded with each run in `studies/results/.../result.json`).

Reproduce everything with

    make train                       # once: builds .venv (and the data)
    .venv/bin/python studies/run.py  # every experiment; stop and restart at will
    .venv/bin/python studies/results.py

or one experiment with `studies/run.py <name>` (`--list` names them,
`--dry_run` prints the commands). Finished runs are kept in
`studies/results/` and skipped; a run cut short resumes from its
checkpoint. The committed results make a rerun skip everything: to redo
the runs, pass `--results_dir=<an empty folder>` (or delete a run's
folder under `studies/results/`; its `result.json` holds the exact
commands); `studies/results.py --results_dir=<it> --output=<page>`
writes the page of such a set. A kept result that no longer matches its command or its
flagfiles' flags is refused, not reused. A train time marked * belongs to
a run resumed after an interruption and counts only its last attempt.
On GPUs: `.venv/bin/python studies/run.py
--device_flags=--gpus=4` adds the flag to every train.py and eval.py
command. The global batch stays the flagfiles' (split across the GPUs), so
the runs compute the same thing, and results kept from CPU runs still
count; the study has not been run on GPUs (none could run TensorFlow
here).
"""

CAVEATS = """
What these numbers can and cannot say: with three seeds per cell, a
verdict rests on the paired t-test's 95% interval of the per-seed
differences (t = 4.30 with 2 degrees of freedom: the interval is the
mean ± 2.5 standard deviations of the differences); "not established"
means it contains 0. Every head had the same small budget
(500 steps) and a three-point grid on one hyper-parameter; longer
training or wider tuning may reorder heads that are close. In
long-tailed Fashion-MNIST the rarest classes (sneaker, bag, ankle boot)
are among its easiest, while the confusable tops sit in the many- and
medium-shot groups, so few-shot recall here measures the prior shift
more than fine-grained separation; the per-class table of the tops
speaks to the latter.
"""


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--results_dir", default=str(tables.RESULTS),
                      help="the kept results to read (studies/run.py's "
                      "--results_dir)")
  parser.add_argument("--output", default=str(ROOT / "RESULTS.md"),
                      help="the page to write")
  args = parser.parse_args(argv)
  results = pathlib.Path(args.results_dir).resolve()
  output = pathlib.Path(args.output).resolve()
  # Pictures go beside the page, as its links say (docs/<name>.png).
  tables.DOCS = output.parent / "docs"
  sections, conclusions, unfinished, total = [], [], [], 0.0
  for name in experiments.names():
    module = experiments.module(name)
    experiment = module.EXPERIMENT
    runs = tables.load(experiment, results=results)
    if any(set(experiment.seeds_of(run)) - set(runs[run.name].seeds
                                               if run.name in runs else ())
           for run in experiment.runs):
      unfinished.append(name)
    seconds = tables.total_seconds(name, results)
    total += seconds
    heading = f"## {experiment.title}\n\n"
    if not runs:
      sections.append(heading + f"Not run yet: `.venv/bin/python "
                      f"studies/run.py {name}`."
                      + (f" {module.NOT_RUN}" if hasattr(module, "NOT_RUN")
                         else "") + "\n")
      continue
    body = module.section(runs, experiment)
    if hasattr(module, "conclusion"):
      conclusions += module.conclusion(runs, experiment)
    sections.append(heading + body.strip() + "\n\n" + (
        f"Reproduce: `.venv/bin/python studies/run.py {name}` "
        f"({tables.duration(seconds)} of training and evaluation on 2 CPU "
        f"cores for the runs kept, tuning included).\n"))
  summary = ""
  if conclusions:
    summary = ("## Conclusion\n\nDoes CFAL beat the best long-tail baseline "
               "on the tail classes here, by how much, and with what spread "
               "across seeds?\n\n" + "\n".join(conclusions) + "\n"
               + CAVEATS + "\n")
  done = (f"The study so far (not finished: {', '.join(unfinished)}) took"
          if unfinished else "The whole study took")
  text = (INTRO + f"\n{done} {total / 3600:.1f} hours of wall time on 2 CPU "
          f"cores, training and evaluation (written "
          f"{datetime.date.today():%Y-%m-%d}).\n\n" + summary
          + "\n".join(sections))
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(text)
  print(f"Wrote {output} ({len(sections)} experiments, "
        f"{total / 3600:.1f} h of runs).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
