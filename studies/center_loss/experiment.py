"""Experiment 2: softmax, center loss by the alpha rule and by gradient."""

from studies.runner import Experiment, Run

PICTURES = ("embeddings.png",)

EXPERIMENT = Experiment(
    name="center_loss",
    title="The center-loss repository: 2-D LeNets++ features of MNIST",
    runs=tuple(
        Run(name, (f"studies/center_loss/{name}.flags",), keep=PICTURES)
        for name in ("softmax", "center_alpha", "center_gradient")),
)


def section(runs, experiment) -> str:
  """RESULTS.md's text for this experiment (see studies/results.py)."""
  # pylint: disable=import-outside-toplevel
  from studies.tables import mean_sd, picture_row, table
  rows = [[f"`{name}`", str(len(run.seeds)),
           mean_sd(run.values("accuracy"), 4),
           mean_sd(run.values("embedding.compactness")),
           mean_sd(run.values("embedding.separation_min")),
           mean_sd(run.values("embedding.ratio")),
           mean_sd(run.values("embedding.map_at_r")),
           run.train_time()]
          for name, run in runs.items()]
  text = [
      "LeNets++ (`--backbone=prelu_cnn`: three stages of two 5x5 PReLU "
      "convolutions, 32/64/128 filters) with a 2-D embedding on the MNIST "
      "digits, SGD with momentum 0.9 at lr 0.05 after a 120-step warmup, "
      "batch 128, 10 epochs; the last checkpoint is evaluated on the test "
      "digits. `center_alpha` moves the centers by the paper's rule "
      "(alpha 0.5), `center_gradient` learns them as weights, both with "
      "lambda 0.01. Compactness is the mean Euclidean distance of an "
      "embedding to its class mean, separation the smallest distance "
      "between two class means, and the ratio separation / compactness "
      "(higher: tighter, better separated classes).",
      "",
      table(["run", "seeds", "test accuracy", "compactness",
             "separation (min)", "ratio", "MAP@R", "train time"], rows),
  ]
  text += picture_row(
      runs, list(runs), "center_loss",
      "Test features of seed {seed}, centers (prototypes) marked:")
  return "\n".join(text)
