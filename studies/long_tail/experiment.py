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
