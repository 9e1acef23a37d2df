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


SIMILAR = ("T-shirt/top", "Pullover", "Coat", "Shirt")


def _sizes(runs) -> str:
  """"ratio 100: 5,400 down to 54, 13,401 in all; ..." from the training
  counts the runs recorded."""
  parts = []
  for ratio in RATIOS:
    run = next((r for n, r in runs.items() if n.startswith(f"r{ratio}_")),
               None)
    if run is None:
      continue
    counts = list(run.reports[run.seeds[0]]["long_tail"]["class_counts"]
                  .values())
    parts.append(f"ratio {ratio}: {max(counts):,} down to {min(counts):,}, "
                 f"{sum(counts):,} in all")
  return "; ".join(parts)


def conclusion(runs, experiment) -> list[str]:
  """RESULTS.md's conclusion lines from this experiment."""
  # pylint: disable=import-outside-toplevel
  from studies import tables
  lines = []
  for ratio in RATIOS:
    cells = tables.long_tail_cells(
        runs, [(label, f"r{ratio}_{head}", evaluation)
               for label, head, evaluation in ROWS])
    verdicts = tables.verdicts(cells, f"Ratio {ratio}")
    lines += verdicts
    if len(verdicts) == 1:
      continue
    cfal = cells["CFAL"]["seeds"]
    left_out = [l for l, c in cells.items()
                if not set(c["seeds"]) >= set(cfal)]
    missing = [label for label, head, _ in ROWS
               if label not in cells]
    compared = [l for l in cells if l != "CFAL" and l not in left_out]
    lines.append(
        f"  (Compared at ratio {ratio}: {', '.join(compared)}"
        + (f"; not yet with all of CFAL's seeds: {', '.join(left_out)}"
           if left_out else "")
        + (f"; not run yet: {', '.join(missing)}" if missing else "")
        + ". The best baseline is picked on the test numbers.)")
  return lines


def section(runs, experiment) -> str:
  """RESULTS.md's text for this experiment (see studies/results.py)."""
  # pylint: disable=import-outside-toplevel
  from studies import tables
  # The kept results the runs were loaded from (<results>/<experiment>/<run>).
  results = next(iter(runs.values())).folder.parents[1]
  text = [
      "Fashion-MNIST made long-tailed: after a balanced validation split "
      "of 6,000 images is taken out, class c keeps `5400 * R^(-c/9)` "
      f"training images ({_sizes(runs)}). The test set is the balanced "
      "10,000. Its shirt, T-shirt, pullover and coat classes are the "
      "\"similar texture\" problem of the CFAL paper. Every head trains "
      "the same backbone (`seed_cnn`, 64-d embedding) for the same 500 "
      "steps of batch 128 (Adam 1e-3, cosine decay, flip augmentation), "
      "starting from its recipe in `flags/fashion_mnist_lt/` with "
      "`studies/long_tail/common.flags`; the last checkpoint is evaluated. "
      "Class-balanced weights are Cui et al.'s effective number: focal "
      "and CFAL use them by default, with their recipes' beta 0.999; "
      "LDAM-DRW re-weights from step 400 with beta 0.9999. Post-hoc logit "
      "adjustment is the softmax runs evaluated again with `eval.py "
      "--logit_adjustment=1`, so its MAP@R and train time are the softmax "
      "row's.",
      "",
      "Tuning: each head's main hyper-parameter, three values, seed 0, "
      "ratio 100, scored by balanced accuracy on the validation split "
      "(chosen value in bold); the ratio-10 runs reuse the choice. "
      "Softmax has no head hyper-parameter and was not tuned; the scale "
      "of the cosine heads stays at the recipes' 30, and the other "
      "hyper-parameters at the recipes' values.",
      "",
      tables.table(["head", "validation balanced accuracy per value"],
                   tables.tuning_rows(experiment, results,
                                      lambda name: name.split("_", 1)[1]),
                   right_from=2),
  ]
  conclusions = []
  for ratio in RATIOS:
    cells = tables.long_tail_cells(
        runs, [(label, f"r{ratio}_{head}", evaluation)
               for label, head, evaluation in ROWS])
    if not cells:
      text += ["", f"Ratio {ratio}: not run yet."]
      continue
    rule = next(iter(cells.values()))["rule"]
    picture = tables.group_bars(
        cells, f"Long-tailed Fashion-MNIST, imbalance ratio {ratio}: recall "
        f"by class group (mean ± sd over seeds)", f"long_tail_r{ratio}.png")
    seconds = tables.total_seconds(experiment.name, results,
                                   f"r{ratio}_*")
    text += ["", f"### Imbalance ratio {ratio}", "",
             tables.long_tail_table(cells),
             "", f"Groups: {rule}.", "",
             f"![Recall by class group at ratio {ratio}]({picture})", "",
             "Recall of the four classes the CFAL paper's \"similar "
             "texture\" question is about (Fashion-MNIST's confusable "
             "tops; training images in brackets):", "",
             tables.class_recall_table(cells, SIMILAR),
             "", f"Reproduce this table: `.venv/bin/python studies/run.py "
             f"long_tail --only='r{ratio}_*'` ({tables.duration(seconds)} of "
             f"training and evaluation on 2 CPU cores for the runs kept"
             + (", tuning included" if ratio == RATIOS[0] else
                f"; it reuses ratio {RATIOS[0]}'s tuning") + ")."]
    conclusions += tables.verdicts(cells, f"Ratio {ratio}")
  text += ["", "### CFAL against the best baseline", "",
           "Paired by seed (the same seed draws the same split, "
           "subsample and initial backbone weights for every head); the "
           "answer follows the paired t-test's 95% interval of the per-seed "
           "differences. The best baseline is picked on the test numbers "
           "themselves, which favours the baselines.", "", *conclusions]
  return "\n".join(text)
