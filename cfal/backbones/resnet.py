"""ResNet with basic blocks (He et al. 2016), for 28x28 up to 224x224 images."""

from __future__ import annotations

from typing import Sequence

import keras

from cfal.backbones import common

MIN_SIZE = 28
# Images at least this large get the ImageNet stem (7x7/2 conv + 3x3/2 pool).
LARGE_STEM_SIZE = 64


def _conv_bn(x, filters: int, kernel_size: int, strides: int,
             seeds: common.Seeds, name: str, relu: bool = True):
  """Conv2D (no bias) -> BatchNorm -> optional ReLU."""
  x = keras.layers.Conv2D(filters, kernel_size, strides=strides,
                          padding="same", use_bias=False,
                          kernel_initializer=seeds.he_normal(), name=name)(x)
  x = keras.layers.BatchNormalization(synchronized=True,
                                          name=f"{name}_bn")(x)
  if relu:
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
  return x


def _basic_block(x, filters: int, strides: int, seeds: common.Seeds,
                 name: str):
  """Two 3x3 conv-BN layers plus a shortcut, then ReLU.

  The shortcut is the identity, or a 1x1 conv + BatchNorm projection (He et
  al.'s option B) when the stride or the channel count changes.
  """
  shortcut = x
  if strides != 1 or x.shape[-1] != filters:
    shortcut = _conv_bn(x, filters, 1, strides, seeds, f"{name}_proj",
                        relu=False)
  x = _conv_bn(x, filters, 3, strides, seeds, f"{name}_conv1")
  x = _conv_bn(x, filters, 3, 1, seeds, f"{name}_conv2", relu=False)
  x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
  return keras.layers.ReLU(name=f"{name}_out")(x)


def build_resnet(*, input_shape: tuple[int, int, int], embedding_dim: int,
                 seed: int | None = None,
                 depth_per_stage: Sequence[int] = (2, 2, 2, 2),
                 width: int = 64) -> keras.Model:
  """A ResNet of basic residual blocks with a stem sized to the input.

  He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition",
  CVPR 2016. The stem is a 3x3 stride-1 conv (no pooling) for images under
  64 pixels a side, as the CIFAR ResNets, and the ImageNet 7x7 stride-2 conv
  plus 3x3 stride-2 max-pool otherwise; every conv is followed by
  BatchNorm and ReLU. Stages of basic blocks follow, the first with stride
  1 and every later one halving the resolution in its first block while
  doubling the channels. Global average pooling and `Dense(embedding_dim)`
  (float32 whatever the global dtype policy) give the embedding. The
  defaults are ResNet-18 (11.2M weights plus the embedding layer).

  BatchNorm is synchronized across replicas (global-batch statistics), so
  a mirrored run trains like one device.

  Args:
    input_shape: `(height, width, channels)`, height and width >= 28.
    embedding_dim: embedding size D.
    seed: makes the initial weights reproducible without touching global
      random state.
    depth_per_stage: basic blocks per stage, one entry per stage (default
      `(2, 2, 2, 2)`, ResNet-18; `(3, 4, 6, 3)` is ResNet-34).
    width: channels of the stem and first stage (default 64), doubled at
      each later stage.
  """
  height, width_px, channels = common.check_input_shape("resnet", input_shape,
                                                        MIN_SIZE)
  embedding_dim = common.check_positive_int("embedding_dim", embedding_dim)
  width = common.check_positive_int("width", width)
  try:
    depths = [common.check_positive_int("depth_per_stage entries", d)
              for d in depth_per_stage]
  except TypeError:
    depths = []
  if not depths:
    raise ValueError("resnet: depth_per_stage must be a non-empty sequence "
                     f"of positive ints, got {depth_per_stage!r}")
  seeds = common.Seeds(seed)

  inputs = keras.Input(shape=(height, width_px, channels), dtype="float32",
                       name="images")
  if min(height, width_px) < LARGE_STEM_SIZE:
    x = _conv_bn(inputs, width, 3, 1, seeds, "stem_conv")
  else:
    x = _conv_bn(inputs, width, 7, 2, seeds, "stem_conv")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                  name="stem_pool")(x)
  for stage, depth in enumerate(depths, start=1):
    filters = width * 2 ** (stage - 1)
    for block in range(1, depth + 1):
      strides = 2 if stage > 1 and block == 1 else 1
      x = _basic_block(x, filters, strides, seeds,
                       f"stage{stage}_block{block}")
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  x = keras.layers.Dense(embedding_dim,
                         kernel_initializer=seeds.glorot_uniform(),
                         dtype="float32", name="embedding")(x)
  return keras.Model(inputs, x, name="resnet")
