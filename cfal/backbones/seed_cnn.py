"""Small BatchNorm CNN with unit-sphere embeddings, for MNIST-sized inputs."""

from __future__ import annotations

import keras

from cfal.backbones import common

# Two 2x2 max-pools: smaller images would pool down to nothing.
MIN_SIZE = 4
POOLINGS = ("flatten", "avg")


def build_seed_cnn(*, input_shape: tuple[int, int, int], embedding_dim: int,
                   seed: int | None = None, normalize: bool = True,
                   pooling: str = "flatten") -> keras.Model:
  """The small CNN of the "ArcFace vs softmax on MNIST" notebooks.

  Two conv blocks, each `[Conv2D 3x3 -> BatchNorm -> ReLU] x 2 -> MaxPool
  2x2` (32 then 64 filters, 'same' padding, no conv bias since BatchNorm
  follows), then `Flatten` (or global average pooling), `Dense(128) -> ReLU
  -> BatchNorm`, `Dense(embedding_dim)` and, with `normalize`, division by
  the L2 norm, so the embeddings lie on the unit sphere (a circle in 2-D, a
  sphere in 3-D: the pictures these notebooks draw). The embedding layers
  run in float32 whatever the global dtype policy. BatchNorm is
  synchronized: under a distribution strategy it normalises with the
  statistics of the global batch, so N replicas train exactly like one
  device.

  Flatten keeps where a stroke is, which is what a digit is; its Dense(128)
  has `(H/4) * (W/4) * 64 * 128` weights (401k at 28x28), so large images
  want `pooling="avg"`.

  Args:
    input_shape: `(height, width, channels)`, height and width >= 4.
    embedding_dim: embedding size D.
    seed: makes the initial weights reproducible without touching global
      random state.
    normalize: L2-normalise the embeddings (default True).
    pooling: "flatten" (default) or "avg" (global average pooling).
  """
  height, width, channels = common.check_input_shape("seed_cnn", input_shape,
                                                     MIN_SIZE)
  embedding_dim = common.check_positive_int("embedding_dim", embedding_dim)
  if pooling not in POOLINGS:
    raise ValueError(f"seed_cnn: pooling must be one of {', '.join(POOLINGS)}"
                     f", got {pooling!r}")
  seeds = common.Seeds(seed)

  inputs = keras.Input(shape=(height, width, channels), dtype="float32",
                       name="images")
  x = inputs
  for block, filters in enumerate((32, 64), start=1):
    for conv in (1, 2):
      prefix = f"block{block}_conv{conv}"
      x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              kernel_initializer=seeds.he_normal(),
                              name=prefix)(x)
      x = keras.layers.BatchNormalization(synchronized=True,
                                            name=f"{prefix}_bn")(x)
      x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
    x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
  if pooling == "flatten":
    x = keras.layers.Flatten(name="flatten")(x)
  else:
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  x = keras.layers.Dense(128, kernel_initializer=seeds.he_normal(),
                         name="fc")(x)
  x = keras.layers.ReLU(name="fc_relu")(x)
  x = keras.layers.BatchNormalization(synchronized=True, name="fc_bn")(x)
  x = keras.layers.Dense(embedding_dim,
                         kernel_initializer=seeds.glorot_uniform(),
                         dtype="float32", name="embedding")(x)
  if normalize:
    x = keras.layers.UnitNormalization(axis=-1, dtype="float32",
                                       name="l2_normalize")(x)
  return keras.Model(inputs, x, name="seed_cnn")
