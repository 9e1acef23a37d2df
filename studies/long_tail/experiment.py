"""Experiment 3: long-tailed Fashion-MNIST, eleven heads, two imbalance ratios.

Every head starts from its recipe in `flags/fashion_mnist_lt/`, then
`studies/long_tail/common.flags` gives all of them the same budget. A
head's main hyper-parameter is tuned on the (balanced) validation split at
ratio 100 with seed 0, three values per head; the ratio-10 runs use the
value chosen at ratio 100. Post-hoc logit adjustment is not a training run:
it is the softmax runs evaluated a second time with `--logit_adjustment=1`.
"""

from studies.runner import Experiment, Grid, Run

RATIOS = (100, 10)
COMMON = "studies/long_tail/common.flags"
# What the runner evaluates: the balanced test set at the last checkpoint.
TEST = {"test": ("--split=test",)}
POSTHOC = {**TEST, "test_posthoc_la": ("--split=test", "--logit_adjustment=1")}

# name -> (recipe, extra flags, grid of the head's main hyper-parameter).
HEADS = {
    "softmax": ("softmax", {}, None),
    "cb_softmax": ("softmax", {"class_weighting": "effective_number"},
                   {"beta": (0.99, 0.999, 0.9999)}),
    "cb_focal": ("focal", {}, {"gamma": (0.5, 1.0, 2.0)}),
    "logit_adjusted": ("logit_adjusted", {}, {"tau": (0.5, 1.0, 1.5)}),
    # DRW from step 400 of 500, the paper's 80% (160 of 200 epochs).
    "ldam_drw": ("ldam", {"reweight_from_step": 400},
                 {"max_margin": (0.3, 0.5, 0.7)}),
    "arcface": ("arcface", {}, {"margin": (0.1, 0.2, 0.3)}),
    "cosface": ("cosface", {}, {"margin": (0.1, 0.2, 0.35)}),
    "subcenter_arcface": ("subcenter_arcface", {},
                          {"margin": (0.1, 0.2, 0.3)}),
    "center_loss": ("center_loss", {}, {"center_weight": (0.001, 0.01, 0.1)}),
    "affinity": ("affinity", {}, {"sigma": (30.0, 100.0, 300.0)}),
    "cfal": ("cfal", {}, {"sigma": (30.0, 100.0, 300.0)}),
}
BASELINES = tuple(h for h in HEADS if h != "cfal")
# The order the runner trains them in: CFAL and the strongest-known
# baselines first, so a study stopped early can already compare them.
PRIORITY = ("cfal", "softmax", "logit_adjusted", "ldam_drw", "cb_focal",
            "cb_softmax", "affinity", "arcface", "cosface",
            "subcenter_arcface", "center_loss")


def _run(ratio: int, head: str) -> Run:
  recipe, flags, grid = HEADS[head]
  tuned = ratio == RATIOS[0] and grid is not None
  return Run(
      f"r{ratio}_{head}",
      (f"flags/fashion_mnist_lt/{recipe}.flags", COMMON),
      flags={"imbalance_ratio": ratio, **flags},
      evals=POSTHOC if head == "softmax" else TEST,
      grid=Grid(grid) if tuned else None,
      tuned_like=(f"r{RATIOS[0]}_{head}"
                  if ratio != RATIOS[0] and grid is not None else None))


EXPERIMENT = Experiment(
    name="long_tail",
    title="Long-tailed Fashion-MNIST: CFAL against the long-tail baselines",
    runs=tuple(_run(r, h) for r in RATIOS for h in PRIORITY),
)


# -- RESULTS.md ---------------------------------------------------------------

# Rows of the tables: (label, run head, evaluation).
ROWS = (("softmax", "softmax", "test"),
        ("softmax + post-hoc LA", "softmax", "test_posthoc_la"),
        ("class-balanced softmax", "cb_softmax", "test"),
        ("class-balanced focal", "cb_focal", "test"),
        ("logit-adjusted loss", "logit_adjusted", "test"),
        ("LDAM-DRW", "ldam_drw", "test"),
        ("ArcFace", "arcface", "test"),
        ("CosFace", "cosface", "test"),
        ("sub-center ArcFace", "subcenter_arcface", "test"),
        ("center loss", "center_loss", "test"),
        ("affinity", "affinity", "test"),
        ("CFAL", "cfal", "test"))
GROUPS = ("many", "medium", "few")


def _group(group: str):
  return lambda report: report["long_tail"]["groups"][group]["recall"]


def _cells(runs, ratio):
  """label -> {metric: [per-seed values]}, seeds, for the finished cells."""
  cells = {}
  for label, head, evaluation in ROWS:
    run = runs.get(f"r{ratio}_{head}")
    if run is None:
      continue
    reports = {s: run.report(evaluation, s) for s in run.seeds}
    values = {"balanced_accuracy": [reports[s]["balanced_accuracy"]
                                    for s in run.seeds],
              "macro_f1": [reports[s]["macro_f1"] for s in run.seeds],
              "map_at_r": [reports[s]["embedding"]["map_at_r"]
                           for s in run.seeds]}
    for g in GROUPS:
      values[g] = [_group(g)(reports[s]) for s in run.seeds]
    cells[label] = {"head": head, "run": run, "seeds": run.seeds,
                    "values": values,
                    "rule": reports[run.seeds[0]]["long_tail"]["rule"]}
  return cells


def _tuning_rows(experiment, results):
  """Rows of the tuning table: head, grid, validation score per point."""
  # pylint: disable=import-outside-toplevel
  import json
  from studies.runner import point_name
  rows = []
  for run in experiment.runs:
    if run.grid is None:
      continue
    scored = []
    for point in run.grid.points():
      path = (results / experiment.name / run.name / "tune" /
              point_name(point) / f"seed-{run.grid.seed}" / "validation.json")
      if path.exists():
        scored.append((json.loads(path.read_text())[run.grid.metric], point))
    if not scored:
      continue
    best = max(scored, key=lambda item: item[0])[1]
    tried = ", ".join(
        (f"**{point_name(p)}: {v:.3f}**" if p == best
         else f"{point_name(p)}: {v:.3f}") for v, p in scored)
    rows.append([f"`{run.name.split('_', 1)[1]}`", tried])
  return rows


def _picture(cells, ratio):
  """Grouped bars of many/medium/few-shot recall, mean ± sd over seeds."""
  # pylint: disable=import-outside-toplevel
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  from studies.tables import DOCS
  labels = list(cells)
  fig, ax = plt.subplots(figsize=(10, 4.2), dpi=100)
  width = 0.27
  x = np.arange(len(labels))
  for i, g in enumerate(GROUPS):
    means = [np.mean(cells[l]["values"][g]) for l in labels]
    sds = [np.std(cells[l]["values"][g], ddof=1)
           if len(cells[l]["seeds"]) > 1 else 0.0 for l in labels]
    ax.bar(x + (i - 1) * width, means, width, yerr=sds, capsize=2,
           label=f"{g}-shot classes")
  ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("test recall (mean of the group's classes)")
  ax.set_ylim(0, 1.12)
  ax.set_yticks(np.linspace(0, 1, 6))
  ax.set_title(f"Long-tailed Fashion-MNIST, imbalance ratio {ratio}: recall "
               f"by class group (mean ± sd over seeds)", fontsize=10)
  ax.legend(fontsize=8, loc="upper center", ncol=3)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  DOCS.mkdir(exist_ok=True)
  name = f"long_tail_r{ratio}.png"
  fig.savefig(DOCS / name)
  plt.close(fig)
  return f"docs/{name}"


def _paired(cells, ratio):
  """The paired comparison of CFAL against the best baseline."""
  # pylint: disable=import-outside-toplevel
  import statistics
  from studies.tables import paired_difference
  if "CFAL" not in cells:
    return [f"Ratio {ratio}: CFAL has not run yet."]
  cfal = cells["CFAL"]
  baselines = {l: c for l, c in cells.items() if l != "CFAL"
               and set(c["seeds"]) >= set(cfal["seeds"])}
  if not baselines:
    return [f"Ratio {ratio}: no baseline has finished the seeds CFAL has."]
  lines = []
  for metric, what in (("few", "few-shot recall"),
                       ("balanced_accuracy", "balanced accuracy")):
    best = max(baselines, key=lambda l: statistics.mean(
        baselines[l]["values"][metric]))
    seeds = cfal["seeds"]
    mine = cfal["values"][metric]
    theirs = [baselines[best]["values"][metric][baselines[best]["seeds"]
                                                .index(s)] for s in seeds]
    lines.append(
        f"- Ratio {ratio}, {what}: the best baseline by its mean is "
        f"{best} ({statistics.mean(theirs):.3f}); CFAL "
        f"{statistics.mean(mine):.3f}. CFAL minus {best}, paired by seed: "
        f"{paired_difference(mine, theirs)}.")
  return lines


def section(runs, experiment) -> str:
  """RESULTS.md's text for this experiment (see studies/results.py)."""
  # pylint: disable=import-outside-toplevel
  from studies.tables import mean_sd, minutes, table
  # The kept results the runs were loaded from (<results>/<experiment>/<run>).
  results = next(iter(runs.values())).folder.parents[1]
  text = [
      "Fashion-MNIST made long-tailed: after a balanced validation split "
      "of 6,000 images is taken out, class c keeps `5400 * R^(-c/9)` "
      "training images (ratio R = 100: 5,400 down to 54, 13,386 in all; "
      "R = 10: 5,400 down to 540, 22,074). The test set is the balanced "
      "10,000. Its shirt, T-shirt, pullover and coat classes are the "
      "\"similar texture\" problem of the CFAL paper. Every head trains "
      "the same backbone (`seed_cnn`, 64-d embedding) for the same 500 "
      "steps of batch 128 (Adam 1e-3, cosine decay, flip augmentation), "
      "starting from its recipe in `flags/fashion_mnist_lt/` with "
      "`studies/long_tail/common.flags`; the last checkpoint is evaluated. "
      "Class-balanced weights are Cui et al.'s effective number; focal "
      "and CFAL use them by default. LDAM-DRW re-weights from step 400 "
      "(beta 0.9999). Post-hoc logit adjustment is the softmax runs "
      "evaluated again with `eval.py --logit_adjustment=1`.",
      "",
      "Tuning: each head's main hyper-parameter, three values, seed 0, "
      "ratio 100, scored by balanced accuracy on the validation split "
      "(chosen value in bold); the ratio-10 runs reuse the choice. "
      "Softmax has no head hyper-parameter and was not tuned; the scale "
      "of the cosine heads stays at the recipes' 30, and the other "
      "hyper-parameters at the recipes' values.",
      "",
      table(["head", "validation balanced accuracy per value"],
            _tuning_rows(experiment, results), right_from=2),
  ]
  conclusions = []
  for ratio in RATIOS:
    cells = _cells(runs, ratio)
    if not cells:
      text += ["", f"Ratio {ratio}: not run yet."]
      continue
    rows = [[label, str(len(c["seeds"])),
             mean_sd(c["values"]["balanced_accuracy"]),
             mean_sd(c["values"]["macro_f1"]),
             *(mean_sd(c["values"][g]) for g in GROUPS),
             mean_sd(c["values"]["map_at_r"]),
             minutes(sum(c["run"].train_seconds()) / len(c["seeds"]))]
            for label, c in cells.items()]
    rule = next(iter(cells.values()))["rule"]
    text += ["", f"### Imbalance ratio {ratio}", "",
             table(["head", "seeds", "balanced accuracy", "macro-F1",
                    "many-shot recall", "medium-shot recall",
                    "few-shot recall", "MAP@R", "train time"], rows,
                   right_from=1),
             "", f"Groups: {rule}.", "",
             f"![Recall by class group at ratio {ratio}]"
             f"({_picture(cells, ratio)})"]
    conclusions += _paired(cells, ratio)
  text += ["", "### CFAL against the best baseline", "",
           "Paired by seed (the same seed draws the same split, "
           "subsample and initial weights for every head). The best "
           "baseline is picked on the test numbers themselves, which "
           "favours the baselines.", "", *conclusions]
  return "\n".join(text)
