"""The small CNN of the Kaggle "ArcFace on MNIST in 3-D" notebook."""

from __future__ import annotations

import keras

from cfal.backbones import common

# Two 2x2 max-pools.
MIN_SIZE = 4


def build_notebook_cnn(*, input_shape: tuple[int, int, int],
                       embedding_dim: int, seed: int | None = None,
                       normalize: bool = True) -> keras.Model:
  """The network of the notebook that draws ArcFace digits on a sphere.

  `Conv 10 -> Conv 10 -> MaxPool -> Conv 20 -> Conv 20 -> MaxPool ->
  Flatten -> Dense 50 (ReLU) -> Dense embedding_dim`, then, with
  `normalize`, division by the L2 norm, so that a 3-D embedding lies on
  the unit sphere the notebook plots. No BatchNorm and no dropout: with
  1/20th of `seed_cnn`'s weights it is the smallest network in cfal. The
  convolutions are 3x3 with ReLU and 'same' padding and the pools 2x2,
  the usual choice for 28x28 digits (the notebook lists layers and widths
  only). The embedding layers run in float32 whatever the global dtype
  policy.

  Args:
    input_shape: `(height, width, channels)`, height and width >= 4.
    embedding_dim: embedding size D (3 in the notebook).
    seed: makes the initial weights reproducible without touching global
      random state.
    normalize: L2-normalise the embeddings (default True).
  """
  height, width, channels = common.check_input_shape(
      "notebook_cnn", input_shape, MIN_SIZE)
  embedding_dim = common.check_positive_int("embedding_dim", embedding_dim)
  seeds = common.Seeds(seed)

  inputs = keras.Input(shape=(height, width, channels), dtype="float32",
                       name="images")
  x = inputs
  for block, filters in enumerate((10, 20), start=1):
    for conv in (1, 2):
      x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                              kernel_initializer=seeds.he_normal(),
                              name=f"block{block}_conv{conv}")(x)
    x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(50, activation="relu",
                         kernel_initializer=seeds.he_normal(), name="fc")(x)
  x = keras.layers.Dense(embedding_dim,
                         kernel_initializer=seeds.glorot_uniform(),
                         dtype="float32", name="embedding")(x)
  if normalize:
    x = keras.layers.UnitNormalization(axis=-1, dtype="float32",
                                       name="l2_normalize")(x)
  return keras.Model(inputs, x, name="notebook_cnn")
