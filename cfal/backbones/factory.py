"""`build_backbone`: a registered backbone by name, its options checked."""

from __future__ import annotations

from typing import Callable

import keras

from cfal.backbones import registry

# Registry name -> builder function, loaded from the declarations in
# `registry.py` (one list of backbones).
BACKBONES: dict[str, Callable[..., keras.Model]] = {
    name: spec.load() for name, spec in registry.BACKBONES.items()}


def build_backbone(name: str, *, input_shape: tuple[int, int, int],
                   embedding_dim: int, seed: int | None = None,
                   **options) -> keras.Model:
  """Builds the backbone registered as `name`.

  Building with a seed neither reads nor advances any global random state;
  without one, Keras draws the initializer and dropout seeds from Python's
  `random` module. The layers follow the global dtype policy in force when
  the model is built, except the float32 embedding layer(s) at the end.

  Args:
    name: one of `BACKBONES`: "seed_cnn", "notebook_cnn", "prelu_cnn",
      "resnet", "cct",
      or a Keras Applications network ("resnet50", "densenet121",
      "efficientnetv2_b0", "efficientnetv2_s", "convnext_tiny",
      "mobilenetv3_large"; their weights load with
      `cfal.backbones.pretrained.load_pretrained`).
    input_shape: `(height, width, channels)` of one image.
    embedding_dim: embedding size D.
    seed: makes the initial weights (and the dropout patterns) reproducible.
    **options: the backbone's own options, as declared in
      `cfal.backbones.registry.BACKBONES[name]` (strings are parsed).

  Raises:
    ValueError: unknown name, or an input shape, embedding size or option
      value the backbone cannot take (always a one-line message).
  """
  options = registry.check_backbone_options(name, options)
  return BACKBONES[name](input_shape=input_shape, embedding_dim=embedding_dim,
                         seed=seed, **options)
