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
