"""Compact Convolutional Transformer (Hassani et al. 2021)."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from cfal.backbones import common

MIN_SIZE = 28
# Truncated-normal stddevs of the CCT reference implementation.
POSITION_STDDEV = 0.2
DENSE_STDDEV = 0.02


class StochasticDepth(keras.layers.Layer):
  """Drops a whole residual branch per example while training.

  Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016. With
  `keep = 1 - rate`, training multiplies each example's branch by
  `Bernoulli(keep) / keep`, so its expected value is unchanged; at
  inference the branch passes through untouched. Apply it to the branch,
  before adding the shortcut.

  Args:
    rate: probability of dropping the branch, in [0, 1).
    seed: makes the drop pattern reproducible.
    **kwargs: passed to `keras.layers.Layer` (name, dtype).
  """

  def __init__(self, rate: float, seed: int | None = None, **kwargs):
    super().__init__(**kwargs)
    self.rate = common.check_rate("rate", rate)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def call(self, inputs, training=None):
    if not training or self.rate == 0.0:
      return inputs
    keep = 1.0 - self.rate
    rank = len(inputs.shape)
    shape = (ops.shape(inputs)[0],) + (1,) * (rank - 1)
    # Bernoulli(keep) as floor(keep + U[0, 1)), drawn in float32 so that a
    # bfloat16 policy does not round `keep`.
    noise = keras.random.uniform(shape, dtype="float32",
                                 seed=self.seed_generator)
    mask = ops.floor(keep + noise) / keep
    return inputs * ops.cast(mask, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class PositionEmbedding(keras.layers.Layer):
  """Adds a learnable `[1, T, D]` position embedding to a token sequence.

  Args:
    initializer: initializer of the embedding.
    **kwargs: passed to `keras.layers.Layer` (name, dtype).
  """

  def __init__(self, initializer: keras.initializers.Initializer,
               **kwargs):
    super().__init__(**kwargs)
    self.initializer = keras.initializers.get(initializer)

  def build(self, input_shape):
    self.embedding = self.add_weight(
        shape=(1, input_shape[1], input_shape[2]),
        initializer=self.initializer, name="embedding")

  def call(self, inputs):
    return inputs + ops.cast(self.embedding, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape


class SelfAttention(keras.layers.Layer):
  """Multi-head scaled dot-product self-attention over `[N, T, D]` tokens.

  Vaswani et al. 2017: per head `softmax(q k^T / sqrt(d_k)) v` with
  `d_k = D / heads`, heads concatenated and projected back to D. Written out
  rather than using `keras.layers.MultiHeadAttention` because that layer
  clones one initializer for its query, key, value and output kernels: with
  a seeded initializer all four would start equal. The softmax runs in
  float32 under a mixed-precision policy.

  Args:
    num_heads: number of heads; must divide D.
    dropout: dropout on the attention weights and on the output projection.
    seeds: the seed stream the four projections and two dropouts draw
      their seeds from (all six are drawn in `__init__`).
    **kwargs: passed to `keras.layers.Layer` (name, dtype).
  """

  def __init__(self, num_heads: int, dropout: float, seeds: common.Seeds,
               **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.dropout = dropout
    # Drawn now, in build order, so the layer never holds the stream.
    self._kernel_initializers = [seeds.truncated_normal(DENSE_STDDEV)
                                 for _ in range(4)]
    self._dropout_seeds = [seeds.next(), seeds.next()]

  def build(self, input_shape):
    dim = input_shape[-1]
    if dim % self.num_heads:
      raise ValueError(f"{self.name}: {self.num_heads} heads do not divide "
                       f"the token size {dim}")
    self.key_dim = dim // self.num_heads
    self.query, self.key, self.value, self.output_dense = (
        keras.layers.Dense(dim, kernel_initializer=initializer,
                           dtype=self.dtype_policy, name=name)
        for initializer, name in zip(self._kernel_initializers,
                                     ("query", "key", "value", "output")))
    for layer in (self.query, self.key, self.value, self.output_dense):
      layer.build(input_shape)
    self.attention_dropout, self.output_dropout = (
        keras.layers.Dropout(self.dropout, seed=seed, dtype=self.dtype_policy,
                             name=name)
        for seed, name in zip(self._dropout_seeds,
                              ("attention_dropout", "output_dropout")))

  def _split_heads(self, x):
    """`[N, T, D]` -> `[N, heads, T, key_dim]`."""
    x = ops.reshape(x, (ops.shape(x)[0], -1, self.num_heads, self.key_dim))
    return ops.transpose(x, (0, 2, 1, 3))

  def call(self, inputs, training=None):
    q = self._split_heads(self.query(inputs))
    k = self._split_heads(self.key(inputs))
    v = self._split_heads(self.value(inputs))
    scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
    scores = ops.cast(scores, "float32") / math.sqrt(self.key_dim)
    weights = ops.cast(ops.softmax(scores, axis=-1), inputs.dtype)
    weights = self.attention_dropout(weights, training=training)
    x = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))
    x = ops.reshape(x, (ops.shape(x)[0], -1, self.num_heads * self.key_dim))
    return self.output_dropout(self.output_dense(x), training=training)

  def compute_output_shape(self, input_shape):
    return input_shape


class SequencePooling(keras.layers.Layer):
  """Attention-weighted average of the tokens: `[N, T, D]` -> `[N, D]`.

  CCT's SeqPool: a `Dense(1)` scores every token, a softmax over the tokens
  (in float32) turns the scores into weights, and the output is the
  weighted sum of the tokens.

  Args:
    initializer: initializer of the scoring layer's kernel.
    **kwargs: passed to `keras.layers.Layer` (name, dtype).
  """

  def __init__(self, initializer: keras.initializers.Initializer,
               **kwargs):
    super().__init__(**kwargs)
    self.initializer = keras.initializers.get(initializer)

  def build(self, input_shape):
    self.score = keras.layers.Dense(1, kernel_initializer=self.initializer,
                                    dtype=self.dtype_policy, name="score")
    self.score.build(input_shape)

  def call(self, inputs):
    scores = ops.cast(self.score(inputs), "float32")        # [N, T, 1]
    weights = ops.cast(ops.softmax(scores, axis=1), inputs.dtype)
    return ops.sum(weights * inputs, axis=1)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], input_shape[2])


def _encoder_layer(x, *, num_heads: int, mlp_dim: int, dropout: float,
                   drop_rate: float, seeds: common.Seeds, name: str):
  """One pre-LayerNorm transformer encoder layer with stochastic depth."""
  dim = x.shape[-1]

  def residual(x, branch, part):
    if drop_rate > 0.0:
      branch = StochasticDepth(drop_rate, seed=seeds.next(),
                               name=f"{name}_{part}_drop_path")(branch)
    return keras.layers.Add(name=f"{name}_{part}_add")([x, branch])

  y = keras.layers.LayerNormalization(epsilon=1e-5,
                                      name=f"{name}_attention_norm")(x)
  y = SelfAttention(num_heads, dropout, seeds, name=f"{name}_attention")(y)
  x = residual(x, y, "attention")
  y = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_mlp_norm")(x)
  y = keras.layers.Dense(mlp_dim, activation="gelu",
                         kernel_initializer=seeds.truncated_normal(
                             DENSE_STDDEV), name=f"{name}_mlp_dense1")(y)
  y = keras.layers.Dropout(dropout, seed=seeds.next(),
                           name=f"{name}_mlp_dropout1")(y)
  y = keras.layers.Dense(dim, kernel_initializer=seeds.truncated_normal(
      DENSE_STDDEV), name=f"{name}_mlp_dense2")(y)
  y = keras.layers.Dropout(dropout, seed=seeds.next(),
                           name=f"{name}_mlp_dropout2")(y)
  return residual(x, y, "mlp")


def build_cct(*, input_shape: tuple[int, int, int], embedding_dim: int,
              seed: int | None = None, projection_dim: int = 128,
              num_layers: int = 2, num_heads: int = 2,
              mlp_dim: int | None = None, dropout: float = 0.1,
              stochastic_depth: float = 0.1,
              position_embedding: bool = True) -> keras.Model:
  """A Compact Convolutional Transformer, the CFAL paper's backbone.

  Hassani et al., "Escaping the Big Data Paradigm with Compact
  Transformers", 2021:

  * conv tokenizer: two `Conv2D 3x3 stride 1 (no bias) -> ReLU -> MaxPool
    3x3 stride 2 'same'` layers with 64 then `projection_dim` channels, so
    an HxW image gives `ceil(H/4) * ceil(W/4)` tokens (49 at 28x28);
  * an optional learnable position embedding;
  * `num_layers` pre-LayerNorm encoder layers: `x + SD(MHSA(LN(x)))` then
    `x + SD(MLP(LN(x)))`, MLP = `Dense(mlp_dim) -> GELU -> Dense(D)`, with
    dropout on the attention weights, the attention output and after both
    MLP layers; the stochastic-depth rate SD of layer l is
    `stochastic_depth * l / (num_layers - 1)` for l = 0..num_layers-1 (0
    for the first layer, as CCT's `linspace`; a single layer gets
    `stochastic_depth`);
  * a final LayerNorm, sequence pooling (softmax token weights from a
    `Dense(1)`) and `Dense(embedding_dim)` in float32.

  Args:
    input_shape: `(height, width, channels)`, height and width >= 28.
    embedding_dim: embedding size D.
    seed: makes the initial weights and the dropout / stochastic-depth
      patterns reproducible without touching global random state.
    projection_dim: token size (default 128); `num_heads` must divide it.
    num_layers: encoder layers (default 2).
    num_heads: attention heads (default 2), each of size
      `projection_dim // num_heads`.
    mlp_dim: hidden size of the MLP (default `projection_dim`).
    dropout: dropout rate in the encoder layers, in [0, 1) (default 0.1).
    stochastic_depth: stochastic-depth rate of the last layer, in [0, 1)
      (default 0.1).
    position_embedding: add a learnable position embedding (default True).
  """
  height, width, channels = common.check_input_shape("cct", input_shape,
                                                     MIN_SIZE)
  embedding_dim = common.check_positive_int("embedding_dim", embedding_dim)
  projection_dim = common.check_positive_int("projection_dim", projection_dim)
  num_layers = common.check_positive_int("num_layers", num_layers)
  num_heads = common.check_positive_int("num_heads", num_heads)
  mlp_dim = common.check_positive_int(
      "mlp_dim", projection_dim if mlp_dim is None else mlp_dim)
  dropout = common.check_rate("dropout", dropout)
  stochastic_depth = common.check_rate("stochastic_depth", stochastic_depth)
  if projection_dim % num_heads:
    raise ValueError(f"cct: num_heads={num_heads} must divide "
                     f"projection_dim={projection_dim}")
  seeds = common.Seeds(seed)

  inputs = keras.Input(shape=(height, width, channels), dtype="float32",
                       name="images")
  x = inputs
  for i, filters in enumerate((64, projection_dim), start=1):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                            activation="relu",
                            kernel_initializer=seeds.he_normal(),
                            name=f"tokenizer_conv{i}")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                  name=f"tokenizer_pool{i}")(x)
  x = keras.layers.Reshape((-1, projection_dim), name="tokens")(x)
  if position_embedding:
    x = PositionEmbedding(seeds.truncated_normal(POSITION_STDDEV),
                          name="position_embedding")(x)
  rates = (np.linspace(0.0, stochastic_depth, num_layers) if num_layers > 1
           else [stochastic_depth])
  for layer, rate in enumerate(rates, start=1):
    x = _encoder_layer(x, num_heads=num_heads, mlp_dim=mlp_dim,
                       dropout=dropout, drop_rate=float(rate), seeds=seeds,
                       name=f"encoder{layer}")
  x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(x)
  x = SequencePooling(seeds.truncated_normal(DENSE_STDDEV),
                      name="sequence_pool")(x)
  # Glorot, not CCT's 0.02: this layer feeds a head, not a softmax over
  # classes, and embeddings of order one suit the margin heads.
  x = keras.layers.Dense(embedding_dim,
                         kernel_initializer=seeds.glorot_uniform(),
                         dtype="float32", name="embedding")(x)
  return keras.Model(inputs, x, name="cct")
