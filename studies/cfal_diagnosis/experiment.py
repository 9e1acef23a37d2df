"""Experiment 5: where CFAL's prototypes end up, and what moves them.

CFAL with the defaults cfal had before this study (sigma 130, the CFAL
authors' value; margin 0.75, gamma 2, effective-number weights with beta
0.9999, the head at the backbone's learning rate), pinned here so the
experiment does not change when the defaults do, on ratio-100 long-tailed
Fashion-MNIST with experiment 3's budget; then one change at a time: the
head's learning rate (10x, 100x), sigma (30, 1000) and the margin (0.25,
1.5), and sigma 30 with margin 0.25 together. Three seeds each. Besides
the long-tail metrics, eval.py's `prototypes` section says where the
prototypes sit relative to the mean of their class's test embeddings.
"""

from studies.runner import Experiment, Run

FLAGFILES = ("flags/fashion_mnist_lt/common.flags",
             "studies/long_tail/common.flags")
# The starting point: cfal's CFAL defaults before this study.
BEFORE = {"head": "cfal", "sigma": 130.0, "margin": 0.75, "gamma": 2.0,
          "beta": 0.9999}
# name -> the flags changed from BEFORE.
CHANGES = {
    "before": {},
    "head_lr_10x": {"head_learning_rate": 1e-2},
    "head_lr_100x": {"head_learning_rate": 1e-1},
    "sigma_30": {"sigma": 30.0},
    "sigma_1000": {"sigma": 1000.0},
    "margin_0.25": {"margin": 0.25},
    "margin_1.5": {"margin": 1.5},
    "sigma_30_margin_0.25": {"sigma": 30.0, "margin": 0.25},
}
# The row cfal's CFAL defaults were set from (`cfal.heads.CFAL`'s
# signature; a test holds them equal).
CHOSEN = "sigma_30"

EXPERIMENT = Experiment(
    name="cfal_diagnosis",
    title="Diagnosing CFAL: head learning rate, sigma and margin",
    runs=tuple(Run(name, FLAGFILES, flags={**BEFORE, **change},
                   keep=("embeddings.png",))
               for name, change in CHANGES.items()),
)


def _before() -> str:
  """"sigma 130, margin 0.75": the pinned values the changes vary."""
  return ", ".join(f"{k} {BEFORE[k]:g}" for k in ("sigma", "margin"))


def _prototype(key: str):
  return lambda report: report.get("prototypes", {}).get(key, float("nan"))


def section(runs, experiment) -> str:
  """RESULTS.md's text for this experiment (see studies/results.py)."""
  # pylint: disable=import-outside-toplevel
  from studies.tables import mean_sd, picture_row, table
  few = lambda r: r["long_tail"]["groups"]["few"]["recall"]  # noqa: E731
  rows = []
  for name, run in runs.items():
    change = ", ".join(f"{k}={v:g}" for k, v in CHANGES[name].items())
    rows.append([f"`{name}`", change or f"– ({_before()})",
                 str(len(run.seeds)),
                 mean_sd(run.values("balanced_accuracy")),
                 mean_sd(run.values(few)),
                 mean_sd(run.values("embedding.map_at_r")),
                 mean_sd(run.values(_prototype("fraction_to_mean_median")),
                         2),
                 mean_sd(run.values(_prototype("offset_median")), 1),
                 run.train_time()])
  text = [
      "CFAL with cfal's defaults before this study (`before`: sigma "
      "130, the CFAL authors' value, margin 0.75, gamma 2, beta 0.9999, "
      "the head at the backbone's learning rate) on ratio-100 long-tailed "
      "Fashion-MNIST (`flags/fashion_mnist_lt/common.flags` with "
      "experiment 3's 500 steps), then one change at a time, and the "
      "two changes that helped, together. \"Way to mean\" is how far "
      "along the direction of its class's "
      "mean test embedding a prototype sits, as a fraction of that mean's "
      "norm (median over classes; 1 is at the mean); \"offset\" is the "
      "prototype's distance from the class mean in class radii.",
      "",
      table(["run", "change", "seeds", "balanced accuracy",
             "few-shot recall", "MAP@R", "way to mean", "offset (radii)",
             "train time"], rows, right_from=2),
  ]
  base = runs.get("before")
  same = [n for n, r in runs.items() if base is not None and n != "before"
          and r.seeds == base.seeds
          and r.values("balanced_accuracy") == base.values("balanced_accuracy")]
  if same:
    text += ["", f"{', '.join(f'`{n}`' for n in same)} predicted exactly "
             "as `before` on every seed (the same balanced accuracy to "
             "the last digit, a different loss). That is what the loss "
             "implies once its hinge never switches off: CFAL's margin term "
             "is `max(0, margin + d_ij - d_iy)` with affinities d in (0, 1], "
             "so for margin >= 1 it is always positive and the margin only "
             "adds a constant, with no effect on any gradient; at the "
             "default 0.75 the hinge evidently stayed on throughout these "
             "runs as well."]
  text += picture_row(
      runs, ("before", CHOSEN), "cfal_diagnosis",
      "Test embeddings (PCA) of seed {seed}, prototypes marked:")
  return "\n".join(text)


def conclusion(runs, experiment) -> list[str]:
  """RESULTS.md's conclusion lines: where the default prototypes end, and
  which change moves them furthest and what it does to accuracy."""
  # pylint: disable=import-outside-toplevel,unused-argument
  import statistics
  from studies.tables import mean_sd, paired_interval
  base = runs.get("before")
  if base is None:
    return []
  way = _prototype("fraction_to_mean_median")
  lines = [f"- CFAL's diagnosis: with cfal's defaults before this study "
           f"({_before()}) its prototypes "
           f"end {mean_sd(base.values(way), 2)} of the way to their class "
           f"means (median over classes, {len(base.seeds)} seeds)."]
  for name, run in runs.items():
    if name == "before":
      continue
    seeds = [s for s in run.seeds if s in base.seeds]
    if not seeds:
      continue
    diffs = [run.values("balanced_accuracy")[run.seeds.index(s)]
             - base.values("balanced_accuracy")[base.seeds.index(s)]
             for s in seeds]
    interval = paired_interval(diffs)
    ci = ("" if interval is None else
          f", 95% interval [{interval[0]:+.3f}, {interval[1]:+.3f}]")
    lines.append(
        f"  - {name}: prototypes {mean_sd(run.values(way), 2)} of the way; "
        f"balanced accuracy {statistics.mean(diffs):+.3f} against "
        f"`before` over {len(seeds)} paired seed(s){ci}.")
  if CHOSEN in runs:
    change = ", ".join(f"{k}={v:g}" for k, v in CHANGES[CHOSEN].items())
    lines.append(f"  - cfal's CFAL defaults are now `before` with {change} "
                 f"(the `{CHOSEN}` row).")
  return lines
