"""LeNets++: the PReLU CNN of the center-loss paper (Wen et al. 2016)."""

from __future__ import annotations

import keras

from cfal.backbones import common

# Three 2x2 max-pools.
MIN_SIZE = 8


def build_prelu_cnn(*, input_shape: tuple[int, int, int], embedding_dim: int,
                    seed: int | None = None) -> keras.Model:
  """The "LeNets++" network Wen et al. used for their MNIST feature plots.

  Wen, Zhang, Li and Qiao, "A Discriminative Feature Learning Approach for
  Deep Face Recognition", ECCV 2016: three stages of two 5x5 convolutions
  ('same' padding, PReLU with one slope per channel, initial slope 0.25 as
  He et al. 2015) with 32, 64 and 128 filters, each stage followed by a 2x2
  max-pool; then `Flatten -> Dense(embedding_dim)`. No BatchNorm, as in the
  paper. The pools use 'same' padding (a 7x7 map pools to 4x4), which
  matches Caffe's ceil-mode pooling: 28x28 inputs give 4x4x128 features.

  The embedding layer is linear. Wen et al. take the 2-unit FC output as
  the feature; a PReLU after it would squash every negative coordinate by
  its slope, so the features of half the directions would be compressed
  towards the axes. Cosine and margin heads act on the embedding's angle
  and length and should see it undistorted; any nonlinearity belongs before
  the feature layer, not in it. The embedding layer runs in float32
  whatever the global dtype policy.

  Args:
    input_shape: `(height, width, channels)`, height and width >= 8.
    embedding_dim: embedding size D (2 in the paper's plots).
    seed: makes the initial weights reproducible without touching global
      random state.
  """
  height, width, channels = common.check_input_shape("prelu_cnn", input_shape,
                                                     MIN_SIZE)
  embedding_dim = common.check_positive_int("embedding_dim", embedding_dim)
  seeds = common.Seeds(seed)

  inputs = keras.Input(shape=(height, width, channels), dtype="float32",
                       name="images")
  x = inputs
  for stage, filters in enumerate((32, 64, 128), start=1):
    for conv in (1, 2):
      prefix = f"stage{stage}_conv{conv}"
      x = keras.layers.Conv2D(filters, 5, padding="same",
                              kernel_initializer=seeds.he_normal(),
                              name=prefix)(x)
      x = keras.layers.PReLU(
          alpha_initializer=keras.initializers.Constant(0.25),
          shared_axes=[1, 2], name=f"{prefix}_prelu")(x)
    x = keras.layers.MaxPooling2D(2, padding="same",
                                  name=f"stage{stage}_pool")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(embedding_dim,
                         kernel_initializer=seeds.glorot_uniform(),
                         dtype="float32", name="embedding")(x)
  return keras.Model(inputs, x, name="prelu_cnn")
