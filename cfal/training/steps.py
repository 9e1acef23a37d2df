"""The explicit train step: GradientTape, tf.function, XLA, strategies.

The per-replica work is split in two: `compute` (forward, loss, backward:
where the FLOPs are, and what `xla` mode jit-compiles) and the update
(`apply_gradients` and the head's own `update`, which talk across replicas
and stay outside XLA: a cross-replica `merge_call` cannot be compiled).
Between the two, every replica reports whether its images, embeddings,
loss and gradients are finite; a step that is not finite anywhere is never
applied (see `FAULTS`). `train_loop` runs `steps_per_loop` steps in one
compiled call with a `tf.while_loop` over the distributed iterator; the
step count is a tensor, so changing it does not retrace. While the
backbone's body is frozen (`loop_for(step)`), another compiled loop runs
it in inference mode and differentiates only the projection and head; from
the step deferred re-weighting starts (`cfal.training.reweighting`),
another multiplies each example's loss by its class weight. Nothing here
needs AutoGraph (the loop is written as a while_loop), and compiling
without it saves ~10 s of source transformation per trace.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from cfal.heads import Head
from cfal.heads.base import one_hot
from cfal.training.optimization import Group, Optimization

if TYPE_CHECKING:
  from cfal.training.build import Built
  from cfal.training.reweighting import DeferredReweighting

STEP_MODES = ("eager", "function", "xla")


class Steps:
  """The compiled train step of one backbone + head under one strategy.

  Args:
    strategy: the distribution strategy everything was built under.
    backbone: images -> embeddings (a Keras model, called, never fit).
    head: a `cfal.heads.Head`.
    optimization: the optimizers of the parameter groups, built
      (`Optimization.single(optimizer, variables)` for one optimizer; a
      `LossScaleOptimizer` for float16).
    global_batch_size: examples per step over all replicas.
    mode: "eager", "function" or "xla".
    reweighting: optional deferred re-weighting: steps from its
      `first_step` on multiply each example's loss by its class weight.
  """

  def __init__(self, *, strategy: tf.distribute.Strategy,
               backbone: keras.Model, head: Head,
               optimization: Optimization,
               global_batch_size: int,
               mode: str,
               reweighting: DeferredReweighting | None = None):
    if mode not in STEP_MODES:
      raise ValueError(f"`mode` ({mode!r}) must be one of "
                       f"{', '.join(STEP_MODES)}.")
    self.strategy = strategy
    self.backbone = backbone
    self.head = head
    self.optimization = optimization
    self.global_batch_size = global_batch_size
    self.mode = mode
    self.reweighting = reweighting
    # What the forward pass itself moves (BatchNorm statistics, dropout
    # seeds): put back when a step turns out not finite.
    self.forward_state = list(backbone.non_trainable_variables)
    self._scales_loss = optimization.scales_loss
    self._loops: dict[tuple[tuple[str, ...], bool], object] = {}
    # Every group, no re-weighting (what the benchmarks call).
    self.train_loop = self._loop(tuple(optimization.groups), False)

  def loop_for(self, step: int):
    """The compiled loop for `step`: the groups trained then, and whether
    its loss is re-weighted (a call must not cross `boundaries()`)."""
    reweighted = (self.reweighting is not None
                  and self.reweighting.active(step))
    return self._loop(tuple(self.optimization.active(step)), reweighted)

  def boundaries(self) -> list[int]:
    """The steps at which the loop changes (a group joins, re-weighting
    starts): compiled calls end there."""
    steps = set(self.optimization.boundaries())
    if self.reweighting is not None and self.reweighting.first_step > 0:
      steps.add(self.reweighting.first_step)
    return sorted(steps)

  def _loop(self, groups: tuple[Group, ...], reweighted: bool):
    key = (tuple(g.name for g in groups), reweighted)
    if key not in self._loops:
      # The body is frozen when its group is not among these: run the
      # backbone in inference mode, so its BatchNorm statistics stay put.
      training = len(groups) == len(self.optimization.groups)
      weights = self.reweighting.weights if reweighted else None
      compute = lambda images, labels: self._compute_fn(  # noqa: E731
          images, labels, groups, training, weights)
      if self.mode == "xla":
        compute = tf.function(compute, jit_compile=True, autograph=False)
      loop = lambda iterator, num_steps, skip_budget=0: (  # noqa: E731
          self._train_loop_fn(iterator, num_steps, skip_budget,
                              groups=groups, compute=compute))
      self._loops[key] = (loop if self.mode == "eager" else
                          tf.function(loop, autograph=False))
    return self._loops[key]

  def _compute_fn(self, images, labels, groups, training, weights=None):
    variables = [v for g in groups for v in g.variables]
    with tf.GradientTape() as tape:
      embeddings = self.backbone(images, training=training)
      per_example = self.head.loss(embeddings, labels)
      if weights is not None:   # deferred re-weighting: w_{y_i} * loss_i
        per_example = weights(one_hot(labels, self.head.num_classes)) * (
            per_example)
      loss = tf.nn.compute_average_loss(
          per_example, global_batch_size=self.global_batch_size)
      scaled = (self.optimization.scale_loss(loss) if self._scales_loss
                else loss)
    grads = tape.gradient(scaled, variables)
    # Accuracy of the forward pass that produced the loss, before the
    # update moves the head.
    hits = tf.reduce_sum(tf.cast(
        tf.equal(self.head.predict(tf.stop_gradient(embeddings)), labels),
        tf.float32))
    return embeddings, loss, grads, hits, _fault(
        images, embeddings, loss, grads, check_grads=not self._scales_loss)

  def _replica_compute(self, images, labels, compute):
    saved = [tf.identity(v) for v in self.forward_state]
    return (*compute(images, labels), saved)

  def _replica_restore(self, saved):
    for variable, value in zip(self.forward_state, saved):
      variable.assign(value)
    return tf.constant(0)

  def _replica_apply(self, grads, embeddings, labels, groups):
    self.optimization.apply(groups, grads)
    self.head.update(embeddings, labels)
    return tf.constant(0)

  def _train_loop_fn(self, iterator, num_steps, skip_budget=0, *,
                     groups, compute):
    """Runs up to `num_steps` steps in one call.

    A step whose images, embeddings, loss or gradients are not finite on
    any replica is never applied, and what its forward pass changed
    (BatchNorm statistics) is put back: the loop skips it while
    `skip_budget` allows, else stops right there.

    Returns:
      "loss" and "accuracy": means over the applied steps; "steps": batches
      consumed (applied + skipped, and the failing one); "skipped": steps
      skipped; "fault": 0, or the `FAULTS` code of the step that stopped
      the loop.
    """
    num_steps = tf.convert_to_tensor(num_steps, tf.int32)
    skip_budget = tf.convert_to_tensor(skip_budget, tf.int32)
    reduce_sum = lambda v: self.strategy.reduce(  # noqa: E731
        tf.distribute.ReduceOp.SUM, v, axis=None)

    def body(i, applied, skipped, fault, loss_sum, correct):
      images, labels = next(iterator)
      embeddings, loss, grads, hits, faults, saved = self.strategy.run(
          _plain(functools.partial(self._replica_compute, compute=compute)),
          args=(images, labels))
      code = _first_fault(reduce_sum(faults))
      finite = tf.equal(code, 0)

      def apply():
        self.strategy.run(
            _plain(functools.partial(self._replica_apply, groups=groups)),
            args=(grads, embeddings, labels))
        return reduce_sum(loss), reduce_sum(hits)

      def undo():
        self.strategy.run(_plain(self._replica_restore), args=(saved,))
        return tf.constant(0.0), tf.constant(0.0)

      loss_i, hits_i = tf.cond(finite, apply, undo)
      ok = tf.cast(finite, tf.int32)
      skip = (1 - ok) * tf.cast(skipped < skip_budget, tf.int32)
      stop = (1 - ok) * (1 - skip)
      return (i + 1, applied + ok, skipped + skip, code * stop,
              loss_sum + loss_i, correct + hits_i)

    state = (tf.constant(0), tf.constant(0), tf.constant(0), tf.constant(0),
             tf.constant(0.0), tf.constant(0.0))
    if tf.executing_eagerly():   # eager mode: a plain Python loop
      while int(state[0]) < int(num_steps) and int(state[3]) == 0:
        state = body(*state)
    else:
      state = tf.while_loop(
          lambda i, _, __, fault, *___: tf.logical_and(i < num_steps,
                                                       tf.equal(fault, 0)),
          body, state)
    consumed, applied, skipped, fault, loss_sum, correct = state
    denominator = tf.cast(tf.maximum(applied, 1), tf.float32)
    return {"loss": loss_sum / denominator,
            "accuracy": correct / (denominator * self.global_batch_size),
            "steps": consumed, "applied": applied, "skipped": skipped,
            "fault": fault}

# What `_fault` reports, by precedence: the first non-finite thing in the
# chain images -> embeddings -> loss -> gradients names the likely cause.
FAULTS = {1: "images", 2: "embeddings", 3: "loss", 4: "gradients"}


def _fault(images, embeddings, loss, grads, check_grads=True):
  """int32 [4]: 1 where images, embeddings, loss, gradients are not finite.

  With loss scaling (float16) the optimizer itself skips steps whose scaled
  gradients overflow and lowers the scale, so gradients are not checked.
  """
  def bad(x):
    return tf.logical_not(tf.reduce_all(tf.math.is_finite(
        tf.cast(x, tf.float32))))
  grads_bad = (tf.reduce_any(tf.stack([bad(g) for g in grads
                                       if g is not None]))
               if check_grads else tf.constant(False))
  return tf.cast(tf.stack([bad(images), bad(embeddings), bad(loss),
                           grads_bad]), tf.int32)


def _first_fault(flags):
  """Replica-summed `_fault` flags -> 0 or the code of the first fault."""
  hit = tf.cast(flags > 0, tf.int32)
  first = tf.argmax(hit, output_type=tf.int32) + 1
  return tf.where(tf.reduce_any(flags > 0), first, 0)


def _plain(fn):
  """Marks `fn` as needing no AutoGraph (strategy.run converts by default)."""
  return tf.autograph.experimental.do_not_convert(fn)


def steps_for(built: "Built", mode: str) -> Steps:
  """The compiled train loop of a built run (`cfal.training.build.build`)
  in step mode `mode`."""
  return Steps(strategy=built.strategy, backbone=built.backbone,
               head=built.head, optimization=built.optimization,
               global_batch_size=built.config.run.batch_size, mode=mode,
               reweighting=built.reweighting)
