"""Experiment 4: the pathology workflow in miniature, on Fashion-MNIST.

A backbone pre-trained on balanced Fashion-MNIST (one run, seed 0) is
fine-tuned on the ratio-100 long-tailed subset with four heads, against
the same heads trained from scratch with the same budget: each head's
recipe in `flags/fashion_mnist_lt/` with experiment 3's
`studies/long_tail/common.flags` (500 steps), the recipes' hyper-parameters
(not tuned). Fine-tuning only adds `--pretrained=<the pre-training's run
directory>`: the whole network trains, at the recipes' learning rate.
"""

from studies.runner import Experiment, Run

COMMON = "studies/long_tail/common.flags"
PRETRAIN_DIR = "studies/runs/transfer/pretrain/seed-0"
# label -> recipe in flags/fashion_mnist_lt/.
HEADS = {"softmax": "softmax", "logit_adjusted": "logit_adjusted",
         "cb_focal": "focal", "cfal": "cfal"}


def _runs():
  yield Run("pretrain", ("studies/transfer/pretrain.flags",), seeds=(0,),
            run_dir_needed=True)
  for head, recipe in HEADS.items():
    flagfiles = (f"flags/fashion_mnist_lt/{recipe}.flags", COMMON)
    yield Run(f"pretrained_{head}", flagfiles,
              flags={"pretrained": PRETRAIN_DIR})
    yield Run(f"scratch_{head}", flagfiles)


EXPERIMENT = Experiment(
    name="transfer",
    title="Fine-tuning a pre-trained backbone on the long tail",
    runs=tuple(_runs()),
)

LABELS = {"softmax": "softmax", "logit_adjusted": "logit-adjusted loss",
          "cb_focal": "class-balanced focal", "cfal": "CFAL"}


def section(runs, experiment) -> str:
  """RESULTS.md's text for this experiment (see studies/results.py)."""
  # pylint: disable=import-outside-toplevel
  from studies.tables import mean_sd, minutes, paired_difference, table
  few = lambda r: r["long_tail"]["groups"]["few"]["recall"]  # noqa: E731
  rows, gains = [], []
  for head, label in LABELS.items():
    for start in ("pretrained", "scratch"):
      run = runs.get(f"{start}_{head}")
      if run is None:
        continue
      rows.append([label, start, str(len(run.seeds)),
                   mean_sd(run.values("balanced_accuracy")),
                   mean_sd(run.values("macro_f1")),
                   mean_sd(run.values(few)),
                   mean_sd(run.values("embedding.map_at_r")),
                   run.train_time()])
    both = [runs.get(f"{s}_{head}") for s in ("pretrained", "scratch")]
    if all(both) and both[0].seeds == both[1].seeds:
      gains.append(
          f"- {label}: pre-trained minus scratch, balanced accuracy "
          f"{paired_difference(both[0].values('balanced_accuracy'), both[1].values('balanced_accuracy'))}; "
          f"few-shot recall "
          f"{paired_difference(both[0].values(few), both[1].values(few))}.")
  pretrain = runs.get("pretrain")
  tuned = next((r for n, r in runs.items() if n != "pretrain"), None)
  subset = (list(tuned.reports[tuned.seeds[0]]["long_tail"]["class_counts"]
                 .values()) if tuned else None)
  text = [
      "The pre-training: the seed CNN with a softmax head on all 54,000 "
      "balanced training images for 2 epochs (`studies/transfer/"
      "pretrain.flags`, seed 0"
      + (f", {minutes(pretrain.train_seconds()[0])}, test accuracy "
         f"{pretrain.values('accuracy')[0]:.3f}" if pretrain else "")
      + "). Then each head trains on the ratio-100 subset"
      + (f" ({sum(subset):,} images)" if subset else "")
      + " for experiment 3's 500 steps, starting from that backbone "
      "(`--pretrained=studies/runs/transfer/pretrain/seed-0`, whole "
      "network trained, the head new) or from scratch. Hyper-parameters "
      "are the recipes' (`flags/fashion_mnist_lt/`), not tuned. Caveat: "
      "the pre-training trained on the balanced split of seed 0, which "
      "holds every training image of seed 0's subset and about 90% of "
      "seeds 1 and 2's (the rest sat in seed 0's validation split), with "
      "all their classes' images; so this measures what a better starting "
      "representation does to each loss, not generalisation to new images "
      "(the test set was seen by neither).",
      "",
      table(["head", "start", "seeds", "balanced accuracy", "macro-F1",
             "few-shot recall", "MAP@R", "train time"], rows, right_from=2),
  ]
  if gains:
    text += ["", "Paired by seed:", "", *gains]
  return "\n".join(text)


def conclusion(runs, experiment) -> list[str]:
  """RESULTS.md's conclusion lines: CFAL against the best other head when
  all start from the pre-trained backbone (the pathology workflow)."""
  # pylint: disable=import-outside-toplevel,unused-argument
  from studies import tables
  cells = tables.long_tail_cells(
      runs, [(label, f"pretrained_{head}", "test")
             for head, label in LABELS.items()])
  return tables.verdicts(cells, "Fine-tuned from the pre-trained backbone "
                         "(experiment 4, recipes' hyper-parameters)")
