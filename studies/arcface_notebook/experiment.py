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
