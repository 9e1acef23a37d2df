"""Keras Applications networks as cfal backbones, ready for ImageNet weights.

Each backbone wraps the network Keras 3 ships in `keras.applications`,
built without its classifier (`include_top=False`), between cfal's input
contract and an embedding layer:

    images [N, H, W, 1 or 3] float32 in [0, 1]
      -> ImagePreprocessing  gray repeated to RGB; the family's own input
                             transform (below), in float32
      -> the application     the Keras network itself, with its layer names
                             and order, so Keras's ImageNet files load into
                             it (`cfal.backbones.pretrained`)
      -> GlobalAveragePooling2D -> Dense(embedding_dim) [-> L2 normalise]
                             in float32 whatever the dtype policy

The input transforms are those of the family's `preprocess_input` applied
to 0-255 RGB images (x in [0, 1] below):

- resnet50, "caffe": 255 x, RGB -> BGR, minus the BGR means (103.939,
  116.779, 123.68);
- densenet121, "torch": (x - (0.485, 0.456, 0.406)) / (0.229, 0.224,
  0.225);
- efficientnetv2_b0: 255 x; the network divides by 255 and standardises
  as "torch";
- efficientnetv2_s: 255 x; the network maps it to 255 x / 128 - 1;
- convnext_tiny: 255 x; the network standardises it with 255 times the
  "torch" mean and std;
- mobilenetv3_large: 255 x; the network maps it to 255 x / 127.5 - 1.

The last four are built with `include_preprocessing=True` (their Keras
default), and their `preprocess_input` is the identity.

BatchNormalization follows cfal's rule: every BatchNorm layer of the
application is made synchronized (`synchronized=True`: under a
distribution strategy it normalises with the statistics of the global
batch, so N replicas train like one device); the conversion changes no
weight, so ImageNet files load as they do into the Keras model. With
`freeze_batchnorm`, the BatchNorm layers are frozen as the Keras
fine-tuning guide and torchvision's `FrozenBatchNorm2d` do: they always
normalise with their moving statistics (inference mode, even in a
training call), the statistics are never updated, and their scale and
offset (gamma, beta) are not trainable either (Keras's
`trainable = False` on a BatchNorm layer). Gradients still flow through
them to the layers below. Small batches per replica, typical when
fine-tuning large images, then stop corrupting the pretrained
statistics. ConvNeXt uses LayerNorm and has no BatchNorm (nor the option).

Keras builds the applications with unseeded initializers, which draw
their seeds from Python's `random` module; a seeded build seeds that
module for the duration of the build and restores its state afterwards,
so the same seed gives the same weights and no global random state is
advanced. Under a float64 dtype policy (used by tests to compare devices exactly)
the preprocessing and embedding layers compute in float64 instead of
float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from typing import Iterator

import keras
from keras import ops

from cfal.backbones import common

# Keras Applications' smallest input side (include_top=False).
MIN_SIZE = 32
PREPROCESSING = ("caffe", "torch", "keras")
# ImageNet channel statistics of `keras.applications.imagenet_utils`.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Application:
  """How one registry name maps to a Keras application (the papers are in
  the `build_<name>` docstrings below).

  Attributes:
    constructor: the `keras.applications` function that builds it.
    preprocessing: `ImagePreprocessing` mode, one of `PREPROCESSING`.
  """

  constructor: str
  preprocessing: str


APPLICATIONS: dict[str, Application] = {
    "resnet50": Application("ResNet50", "caffe"),
    "densenet121": Application("DenseNet121", "torch"),
    "efficientnetv2_b0": Application("EfficientNetV2B0", "keras"),
    "efficientnetv2_s": Application("EfficientNetV2S", "keras"),
    "convnext_tiny": Application("ConvNeXtTiny", "keras"),
    "mobilenetv3_large": Application("MobileNetV3Large", "keras"),
}


@keras.saving.register_keras_serializable(package="cfal")
class ImagePreprocessing(keras.layers.Layer):
  """cfal images in [0, 1] -> the input a Keras application expects.

  A 1-channel (gray) image is repeated into 3 identical RGB channels
  first. Then, with `x` the RGB image in [0, 1]:

  - "caffe" (ResNet50's `preprocess_input`): `255 x` reversed to BGR,
    minus the ImageNet BGR means (103.939, 116.779, 123.68); no scaling.
  - "torch" (DenseNet's): `(x - mean) / std` per channel with the
    ImageNet RGB mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225),
    which is what "torch" mode does to `255 x` after dividing by 255.
  - "keras": `255 x`, for applications built with
    `include_preprocessing=True`, whose first layers do the rest.

  Args:
    mode: one of "caffe", "torch", "keras".
    **kwargs: passed to `keras.layers.Layer` (name, dtype).
  """

  def __init__(self, mode: str, **kwargs):
    super().__init__(**kwargs)
    if mode not in PREPROCESSING:
      raise ValueError(f"ImagePreprocessing mode must be one of "
                       f"{', '.join(PREPROCESSING)}, got {mode!r}")
    self.mode = mode

  def build(self, input_shape):
    if input_shape[-1] not in (1, 3):
      raise ValueError(f"ImagePreprocessing takes 1 or 3 channels, got "
                       f"input shape {tuple(input_shape)}")
    super().build(input_shape)

  def call(self, images):
    x = images
    if x.shape[-1] == 1:
      x = ops.concatenate([x, x, x], axis=-1)
    if self.mode == "torch":
      mean = ops.convert_to_tensor(TORCH_MEAN, dtype=x.dtype)
      std = ops.convert_to_tensor(TORCH_STD, dtype=x.dtype)
      return (x - mean) / std
    x = x * ops.cast(255.0, x.dtype)
    if self.mode == "caffe":
      x = ops.flip(x, axis=-1)
      x = x - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=x.dtype)
    return x

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], 3)

  def get_config(self):
    return {**super().get_config(), "mode": self.mode}


def batchnorm_layers(model: keras.layers.Layer
                     ) -> list[keras.layers.BatchNormalization]:
  """Every BatchNormalization layer in `model`, nested models included."""
  found = []
  for layer in getattr(model, "layers", ()):
    if isinstance(layer, keras.layers.BatchNormalization):
      found.append(layer)
    else:
      found.extend(batchnorm_layers(layer))
  return found


def application_body(backbone: keras.Model) -> keras.Model:
  """The Keras application inside a backbone `build_application` made.

  Raises:
    ValueError: `backbone` holds no (or more than one) nested model.
  """
  bodies = [layer for layer in backbone.layers
            if isinstance(layer, keras.Model)]
  if len(bodies) != 1:
    raise ValueError(f"{backbone.name} is not a Keras Applications backbone "
                     f"(it holds {len(bodies)} nested models, not 1)")
  return bodies[0]


@contextlib.contextmanager
def _python_random_seeded(seed: int | None) -> Iterator[None]:
  """Seeds Python's `random` for the block and restores its state after.

  Keras gives every unseeded initializer and dropout layer a seed drawn
  from `random` when it is made; this makes those draws a function of
  `seed` without advancing the caller's random state. With `seed=None`
  the draws come from (and advance) the global state, as Keras's do.
  """
  if seed is None:
    yield
    return
  state = random.getstate()
  random.seed(seed)
  try:
    yield
  finally:
    random.setstate(state)


def _outer_dtype() -> str:
  """float32, or float64 under a float64 global dtype policy."""
  policy = keras.config.dtype_policy()
  return "float64" if policy.compute_dtype == "float64" else "float32"


def build_application(name: str, *, input_shape: tuple[int, int, int],
                      embedding_dim: int, seed: int | None = None,
                      normalize: bool = False,
                      freeze_batchnorm: bool = False) -> keras.Model:
  """The Keras application `name` as a cfal backbone (see the module doc).

  The weights start random (Keras's initializers); load ImageNet weights,
  a weights file or another run's backbone with
  `cfal.backbones.pretrained.load_pretrained`.

  Args:
    name: a key of `APPLICATIONS`, e.g. "resnet50".
    input_shape: `(height, width, channels)`, height and width >= 32,
      1 or 3 channels.
    embedding_dim: embedding size D.
    seed: makes the initial weights (and EfficientNetV2's drop-connect
      draws) reproducible without advancing global random state.
    normalize: L2-normalise the embeddings (default False).
    freeze_batchnorm: run every BatchNorm layer in inference mode with
      frozen statistics, gamma and beta (default False).

  Raises:
    ValueError: unknown name, or a shape or size it cannot take (one line).
  """
  if name not in APPLICATIONS:
    raise ValueError(f"unknown Keras application {name!r}; valid names: "
                     f"{', '.join(APPLICATIONS)}")
  application = APPLICATIONS[name]
  height, width, channels = common.check_input_shape(name, input_shape,
                                                     MIN_SIZE)
  if channels not in (1, 3):
    raise ValueError(f"{name} takes 1 (gray) or 3 (RGB) channels, got "
                     f"input_shape={tuple(input_shape)!r}")
  embedding_dim = common.check_positive_int("embedding_dim", embedding_dim)
  seeds = common.Seeds(seed)
  dtype = _outer_dtype()

  inputs = keras.Input(shape=(height, width, channels), dtype="float32",
                       name="images")
  x = ImagePreprocessing(application.preprocessing, dtype=dtype,
                         name="preprocessing")(inputs)
  with _python_random_seeded(seeds.next()):
    body = getattr(keras.applications, application.constructor)(
        include_top=False, weights=None,
        input_tensor=keras.Input(shape=(height, width, 3), dtype=dtype,
                                 name="rgb"))
  for layer in batchnorm_layers(body):
    # Read at call time by BatchNormalization (it adds no variable), so
    # setting it converts the layer in place, weights untouched.
    layer.synchronized = True
    if freeze_batchnorm:
      layer.trainable = False
  x = body(x)
  x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="avg_pool")(x)
  x = keras.layers.Dense(embedding_dim,
                         kernel_initializer=seeds.glorot_uniform(),
                         dtype=dtype, name="embedding")(x)
  if normalize:
    x = keras.layers.UnitNormalization(axis=-1, dtype=dtype,
                                       name="l2_normalize")(x)
  return keras.Model(inputs, x, name=name)


def build_resnet50(*, input_shape: tuple[int, int, int], embedding_dim: int,
                   seed: int | None = None, normalize: bool = False,
                   freeze_batchnorm: bool = False) -> keras.Model:
  """ResNet-50 v1 from Keras Applications (23.6M weights below the head).

  He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition",
  CVPR 2016: bottleneck blocks (1x1, 3x3, 1x1 convolutions) in stages of
  3, 4, 6 and 3, 2048 channels out. Inputs are preprocessed "caffe" style
  (BGR, ImageNet means subtracted from 0-255). Arguments as
  `build_application`.
  """
  return build_application("resnet50", input_shape=input_shape,
                           embedding_dim=embedding_dim, seed=seed,
                           normalize=normalize,
                           freeze_batchnorm=freeze_batchnorm)


def build_densenet121(*, input_shape: tuple[int, int, int],
                      embedding_dim: int, seed: int | None = None,
                      normalize: bool = False,
                      freeze_batchnorm: bool = False) -> keras.Model:
  """DenseNet-121 from Keras Applications (7.0M weights below the head).

  Huang, Liu, van der Maaten and Weinberger, "Densely Connected
  Convolutional Networks", CVPR 2017: four dense blocks of 6, 12, 24 and
  16 BN-ReLU-conv layers with growth rate 32, each layer taking the
  concatenation of all earlier ones; 1024 channels out. Inputs are
  preprocessed "torch" style (ImageNet mean and std). Arguments as
  `build_application`.
  """
  return build_application("densenet121", input_shape=input_shape,
                           embedding_dim=embedding_dim, seed=seed,
                           normalize=normalize,
                           freeze_batchnorm=freeze_batchnorm)


def build_efficientnetv2_b0(*, input_shape: tuple[int, int, int],
                            embedding_dim: int, seed: int | None = None,
                            normalize: bool = False,
                            freeze_batchnorm: bool = False) -> keras.Model:
  """EfficientNetV2-B0 from Keras Applications (5.9M weights below the head).

  Tan and Le, "EfficientNetV2: Smaller Models and Faster Training", ICML
  2021: fused-MBConv stages early, MBConv with squeeze-and-excitation
  later, found by training-aware architecture search; 1280 channels out.
  Its blocks drop their residual branch per example while training
  (drop-connect, rate rising to 0.2). Inputs: 0-255, rescaled and
  standardised inside the network. Arguments as `build_application`.
  """
  return build_application("efficientnetv2_b0", input_shape=input_shape,
                           embedding_dim=embedding_dim, seed=seed,
                           normalize=normalize,
                           freeze_batchnorm=freeze_batchnorm)


def build_efficientnetv2_s(*, input_shape: tuple[int, int, int],
                           embedding_dim: int, seed: int | None = None,
                           normalize: bool = False,
                           freeze_batchnorm: bool = False) -> keras.Model:
  """EfficientNetV2-S from Keras Applications (20.3M weights below the head).

  Tan and Le, "EfficientNetV2: Smaller Models and Faster Training", ICML
  2021, the "small" model of the paper's S/M/L family; 1280 channels out,
  drop-connect while training as EfficientNetV2-B0. Inputs: 0-255, mapped
  to [-1, 1) inside the network (x / 128 - 1). Arguments as
  `build_application`.
  """
  return build_application("efficientnetv2_s", input_shape=input_shape,
                           embedding_dim=embedding_dim, seed=seed,
                           normalize=normalize,
                           freeze_batchnorm=freeze_batchnorm)


def build_convnext_tiny(*, input_shape: tuple[int, int, int],
                        embedding_dim: int, seed: int | None = None,
                        normalize: bool = False) -> keras.Model:
  """ConvNeXt-T from Keras Applications (27.8M weights below the head).

  Liu, Mao, Wu, Feichtenhofer, Darrell and Xie, "A ConvNet for the 2020s",
  CVPR 2022: a ResNet modernised towards Swin-T (4x4 patchify stem, 7x7
  depthwise convolutions, inverted bottlenecks, GELU, LayerNorm, layer
  scale) in stages of 3, 3, 9 and 3 blocks; 768 channels out. It has no
  BatchNorm, hence no `freeze_batchnorm`. Inputs: 0-255, standardised with
  the ImageNet mean and std inside the network. Arguments as
  `build_application`.
  """
  return build_application("convnext_tiny", input_shape=input_shape,
                           embedding_dim=embedding_dim, seed=seed,
                           normalize=normalize)


def build_mobilenetv3_large(*, input_shape: tuple[int, int, int],
                            embedding_dim: int, seed: int | None = None,
                            normalize: bool = False,
                            freeze_batchnorm: bool = False) -> keras.Model:
  """MobileNetV3-Large (width 1.0) from Keras Applications (3.0M weights).

  Howard et al., "Searching for MobileNetV3", ICCV 2019: inverted residual
  blocks with squeeze-and-excitation and hard-swish, found by
  platform-aware architecture search and NetAdapt; 960 channels out.
  Inputs: 0-255, mapped to [-1, 1] inside the network (x / 127.5 - 1).
  Arguments as `build_application`.
  """
  return build_application("mobilenetv3_large", input_shape=input_shape,
                           embedding_dim=embedding_dim, seed=seed,
                           normalize=normalize,
                           freeze_batchnorm=freeze_batchnorm)
