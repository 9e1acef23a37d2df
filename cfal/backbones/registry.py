"""The backbones by name, with their declared options (no TensorFlow).

`BACKBONES[name]` is a `cfal.options.Spec`: where the builder lives and the
options it takes, each with its type, range and help. train.py reads this
to check `--backbone` and `--backbone_args=width=32,depth_per_stage=1;1`
before TensorFlow loads; `cfal.backbones.build_backbone` checks the same
declarations before it builds. Adding a backbone is one builder file and
one entry here. The Keras Applications backbones (resnet50, densenet121,
efficientnetv2_b0, efficientnetv2_s, convnext_tiny, mobilenetv3_large)
can start from ImageNet weights (`cfal.backbones.sources`,
`cfal.backbones.pretrained`).
"""

from __future__ import annotations

from typing import Any, Mapping

from cfal.options import Option, Spec

_DROP = dict(low=0.0, high=1.0, high_open=True)


def _application(name: str, summary: str, *, batchnorm: bool = True) -> Spec:
  """The spec of a Keras Applications backbone (applications.py)."""
  options = (
      Option("normalize", "bool", "L2-normalise the embedding (set from "
             "the head's needs unless given)."),
  )
  if batchnorm:
    options += (Option("freeze_batchnorm", "bool", "BatchNorm in inference "
                       "mode: moving statistics, gamma and beta frozen, as "
                       "when fine-tuning."),)
  return Spec(name, f"cfal.backbones.applications:build_{name}", options,
              f"{summary} from Keras Applications; ImageNet weights exist")


BACKBONES: dict[str, Spec] = {spec.name: spec for spec in (
    Spec("seed_cnn", "cfal.backbones.seed_cnn:build_seed_cnn", (
        Option("normalize", "bool", "L2-normalise the embedding (set from "
               "the head's needs unless given)."),
        Option("pooling", "str", "How the last feature map becomes a vector.",
               choices=("flatten", "avg")),
    ), "the small CNN of the ArcFace-on-MNIST notebooks"),
    Spec("notebook_cnn", "cfal.backbones.notebook_cnn:build_notebook_cnn", (
        Option("normalize", "bool", "L2-normalise the embedding (set from "
               "the head's needs unless given)."),
    ), "the Kaggle ArcFace-on-MNIST-in-3-D notebook's CNN, no BatchNorm"),
    Spec("prelu_cnn", "cfal.backbones.prelu_cnn:build_prelu_cnn", (),
         "LeNets++ with PReLU, the center-loss paper's MNIST network"),
    Spec("resnet", "cfal.backbones.resnet:build_resnet", (
        Option("width", "int", "Filters of the first stage (doubling per "
               "stage).", low=1),
        Option("depth_per_stage", "ints", "Residual blocks per stage, e.g. "
               "2;2;2;2.", low=1),
    ), "ResNet of basic blocks with a stem sized to the input"),
    Spec("cct", "cfal.backbones.cct:build_cct", (
        Option("projection_dim", "int", "Token size.", low=1),
        Option("num_layers", "int", "Transformer encoder layers.", low=1),
        Option("num_heads", "int", "Attention heads (must divide "
               "projection_dim).", low=1),
        Option("mlp_dim", "int", "Hidden size of the encoder MLPs.", low=1),
        Option("dropout", "float", "Dropout rate.", **_DROP),
        Option("stochastic_depth", "float", "Largest drop-path rate.",
               **_DROP),
        Option("position_embedding", "bool", "Learned position embedding."),
    ), "Compact Convolutional Transformer, the CFAL paper's backbone"),
    _application("resnet50", "ResNet-50"),
    _application("densenet121", "DenseNet-121"),
    _application("efficientnetv2_b0", "EfficientNetV2-B0"),
    _application("efficientnetv2_s", "EfficientNetV2-S"),
    _application("convnext_tiny", "ConvNeXt-T (LayerNorm, no BatchNorm)",
                 batchnorm=False),
    _application("mobilenetv3_large", "MobileNetV3-Large"),
)}


def backbone_spec(name: str) -> Spec:
  """The spec registered as `name`, or a one-line ValueError."""
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; valid names: "
                     f"{', '.join(BACKBONES)}")
  return BACKBONES[name]


def check_backbone_options(name: str, values: Mapping[str, Any]
                           ) -> dict[str, Any]:
  """`values` checked against the backbone's declarations (one-line errors)."""
  return backbone_spec(name).check(values, kind="backbone")
