"""Explicit train and eval steps: GradientTape, tf.function, XLA, strategies.

The per-replica work is split in two: `compute` (forward, loss, backward:
where the FLOPs are, and what `xla` mode jit-compiles) and the update
(`apply_gradients` and the head's own `update`, which talk across replicas
and stay outside XLA: a cross-replica `merge_call` cannot be compiled).
`train_loop` runs `steps_per_loop` steps in one compiled call with a
`tf.while_loop` over the distributed iterator; the step count is a tensor,
so changing it does not retrace. Nothing here needs AutoGraph (the loop is
written as a while_loop), and compiling without it saves ~10 s of source
transformation per trace.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from cfal.heads import Head
from cfal.metrics.classification import confusion_matrix_update

STEP_MODES = ("eager", "function", "xla")


class Steps:
  """Train and eval steps for one backbone + head under one strategy.

  Args:
    strategy: the distribution strategy everything was built under.
    backbone: images -> embeddings (a Keras model, called, never fit).
    head: a `cfal.heads.Head`.
    optimizer: a built Keras optimizer (a `LossScaleOptimizer` for float16);
      None for evaluation only.
    global_batch_size: examples per step over all replicas.
    mode: "eager", "function" or "xla".
  """

  def __init__(self, *, strategy: tf.distribute.Strategy,
               backbone: keras.Model, head: Head,
               optimizer: keras.optimizers.Optimizer | None,
               global_batch_size: int,
               mode: str):
    if mode not in STEP_MODES:
      raise ValueError(f"`mode` ({mode!r}) must be one of "
                       f"{', '.join(STEP_MODES)}.")
    self.strategy = strategy
    self.backbone = backbone
    self.head = head
    self.optimizer = optimizer
    self.global_batch_size = global_batch_size
    self.mode = mode
    # A tf.Module does not list a Keras 3 layer's variables: collect both.
    self.variables = (list(backbone.trainable_variables)
                      + list(head.trainable_variables))
    self._scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    self._compute = (
        tf.function(self._compute_fn, jit_compile=True, autograph=False)
        if mode == "xla" else self._compute_fn)
    if mode == "eager":
      self.train_loop = self._train_loop_fn
      self.eval_step = self._eval_step_fn
    else:
      self.train_loop = tf.function(self._train_loop_fn, autograph=False)
      self.eval_step = tf.function(self._eval_step_fn, autograph=False,
                                   reduce_retracing=True)

  def _compute_fn(self, images, labels):
    with tf.GradientTape() as tape:
      embeddings = self.backbone(images, training=True)
      per_example = self.head.loss(embeddings, labels)
      loss = tf.nn.compute_average_loss(
          per_example, global_batch_size=self.global_batch_size)
      scaled = self.optimizer.scale_loss(loss) if self._scales_loss else loss
    grads = tape.gradient(scaled, self.variables)
    return embeddings, loss, grads

  def _replica_step(self, images, labels):
    embeddings, loss, grads = self._compute(images, labels)
    self.optimizer.apply_gradients(zip(grads, self.variables))
    self.head.update(embeddings, labels)
    correct = tf.reduce_sum(tf.cast(
        tf.equal(self.head.predict(embeddings), labels), tf.float32))
    return loss, correct

  def _train_loop_fn(self, iterator, num_steps):
    """Runs `num_steps` steps; returns mean loss and accuracy over them."""
    num_steps = tf.convert_to_tensor(num_steps, tf.int32)
    reduce_sum = lambda v: self.strategy.reduce(  # noqa: E731
        tf.distribute.ReduceOp.SUM, v, axis=None)

    def body(i, loss_sum, correct):
      loss, hits = self.strategy.run(_plain(self._replica_step),
                                     args=next(iterator))
      return i + 1, loss_sum + reduce_sum(loss), correct + reduce_sum(hits)

    if tf.executing_eagerly():   # eager mode: a plain Python loop
      state = (0, tf.constant(0.0), tf.constant(0.0))
      for _ in range(int(num_steps)):
        state = body(*state)
    else:
      state = tf.while_loop(lambda i, *_: i < num_steps, body,
                            (tf.constant(0), tf.constant(0.0),
                             tf.constant(0.0)))
    _, loss_sum, correct = state
    steps = tf.cast(num_steps, tf.float32)
    return {"loss": loss_sum / steps,
            "accuracy": correct / (steps * self.global_batch_size)}

  def _replica_eval(self, images, labels):
    embeddings = tf.cast(self.backbone(images, training=False), tf.float32)
    predictions = self.head.predict(embeddings)
    loss = tf.reduce_sum(self.head.loss(embeddings, labels))
    confusion = confusion_matrix_update(labels, predictions,
                                        self.head.num_classes)
    return embeddings, labels, predictions, loss, confusion

  def _eval_step_fn(self, batch):
    """One distributed eval batch: per-replica results (caller reduces)."""
    return self.strategy.run(_plain(self._replica_eval), args=batch)


def _plain(fn):
  """Marks `fn` as needing no AutoGraph (strategy.run converts by default)."""
  return tf.autograph.experimental.do_not_convert(fn)
