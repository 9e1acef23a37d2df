"""The one builder: a `TrainConfig` -> strategy, data, model, optimizer, checkpoint.

train.py (through `cfal.training.runner`), eval.py (through
`cfal.training.evaluate`) and every program in bench/ build with this
module, so a run is evaluated on exactly the model it trained, and a
benchmark times exactly what train.py runs. Nothing here trains, evaluates
or writes files.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

import cfal.heads
from cfal.backbones import factory as backbone_factory
from cfal.backbones import registry as backbone_registry
from cfal.data import datasets, pipeline
from cfal.errors import UsageError
from cfal.training.config import TrainConfig
from cfal.training.optimization import (OffsetSchedule, Optimization,
                                        make_groups, parameter_parts)
from cfal.training.reweighting import DeferredReweighting, make_reweighting
from cfal.training.strategy import make_strategy


@dataclasses.dataclass
class Counters:
  """The run's bookkeeping, checkpointed with the model so it survives a
  restart: the step (which is also the data position), the best
  validation balanced accuracy, evaluations since it, skipped steps."""

  step: tf.Variable
  best: tf.Variable
  evals_without_gain: tf.Variable
  skipped: tf.Variable


@dataclasses.dataclass
class Built:
  """Everything a run or an evaluation needs, built under `strategy`.

  Attributes:
    config: what it was built from.
    strategy: the distribution strategy every variable lives under.
    data: the loaded dataset (sources, splits, class counts).
    backbone: images -> embeddings.
    head: a `cfal.heads.Head`.
    optimization: the optimizers of the parameter groups, built (slots
      created) for training; None for evaluation.
    counters: step and bookkeeping variables.
    checkpoint: a `tf.train.Checkpoint` of all of the above.
    per_epoch: steps per epoch of the training split.
    total_steps: the run's length in steps.
    eval_every: validation cadence in steps.
    reweighting: the deferred re-weighting of the loss (training only;
      None without it).
  """

  config: TrainConfig
  strategy: tf.distribute.Strategy
  data: datasets.DataBundle
  backbone: keras.Model
  head: cfal.heads.Head
  optimization: Optimization | None
  counters: Counters
  checkpoint: tf.train.Checkpoint
  per_epoch: int
  total_steps: int
  eval_every: int
  reweighting: DeferredReweighting | None = None

  @property
  def trainable_variables(self) -> list[tf.Variable]:
    """Backbone and head (a tf.Module does not list Keras 3 variables)."""
    return (list(self.backbone.trainable_variables)
            + list(self.head.trainable_variables))

  @property
  def all_variables(self) -> list[tf.Variable]:
    """Every variable a checkpoint holds, optimizer slots included."""
    optimizer = self.optimization.variables if self.optimization else []
    return (list(self.backbone.weights) + list(self.head.variables)
            + optimizer)


def build(config: TrainConfig, *, training: bool = True,
          strategy: tf.distribute.Strategy | None = None,
          data: datasets.DataBundle | None = None) -> Built:
  """Builds what `config` describes.

  Args:
    config: the run's configuration.
    training: also build the optimizer (with its slots, inside the strategy
      scope, before any compiled call) and check the training split.
    strategy: use this strategy instead of the one `config.run` names
      (eval.py picks its own devices).
    data: an already loaded dataset for `config.data`.

  Raises:
    UsageError: a configuration that cannot work (one line).
    DataError: missing or bad data.
  """
  run = config.run
  strategy = strategy or build_strategy(config)
  data = data or load_data(config)
  per_epoch = pipeline.steps_per_epoch(len(data.train_indices),
                                       run.batch_size)
  total_steps = run.train_steps or max(1, math.ceil(run.epochs * per_epoch))
  if training:
    check_splits(config, data)
  # A plain record, made outside the strategy scope: multi-worker
  # collectives cannot broadcast a string variable's initial value.
  identity = tf.Variable(config.model.identity(), trainable=False,
                         name="model_identity")
  with strategy.scope():
    keras.utils.set_random_seed(run.seed)
    head = build_head(config, data.class_counts, data.num_classes)
    backbone = build_backbone(config, data.image_shape, head)
    optimization = reweighting = None
    if training:
      reweighting = make_reweighting(
          config.optimizer, class_counts=data.class_counts, head=head,
          per_epoch=per_epoch, total_steps=total_steps)
      optimization = build_optimization(config, total_steps, backbone, head)
      optimization.build()
    counters = Counters(
        step=_counter("step"), best=tf.Variable(
            -1.0, dtype=tf.float64, trainable=False, name="best"),
        evals_without_gain=_counter("evals_without_gain"),
        skipped=_counter("skipped_steps"))
    parts = dict(backbone=backbone, head=head, step=counters.step,
                 model_identity=identity)
    if training:
      parts.update(**optimization.checkpoint_parts,
                   best_balanced_accuracy=counters.best,
                   evals_without_gain=counters.evals_without_gain,
                   skipped_steps=counters.skipped)
    checkpoint = tf.train.Checkpoint(**parts)
  return Built(config=config, strategy=strategy, data=data,
               backbone=backbone, head=head, optimization=optimization,
               counters=counters, checkpoint=checkpoint, per_epoch=per_epoch,
               total_steps=total_steps,
               eval_every=run.eval_every or per_epoch,
               reweighting=reweighting)


def _counter(name: str) -> tf.Variable:
  return tf.Variable(0, dtype=tf.int64, trainable=False, name=name)


def build_strategy(config: TrainConfig) -> tf.distribute.Strategy:
  """The strategy `config.run` names; checks the batch divides over it."""
  run = config.run
  strategy = make_strategy(run.strategy, gpus=run.gpus,
                           cpu_replicas=run.cpu_replicas)
  if run.batch_size % strategy.num_replicas_in_sync:
    raise UsageError(f"--batch_size={run.batch_size} must be divisible by "
                     f"the {strategy.num_replicas_in_sync} replicas.")
  return strategy


def load_data(config: TrainConfig, progress=None) -> datasets.DataBundle:
  """The dataset `config.data` names; a bad setting is a UsageError.

  `progress` gets a `cfal.data.scan.ScanProgress` every few seconds while
  image files are checked (a folder's first scan)."""
  try:
    return datasets.load_data(config.data, progress=progress)
  except ValueError as error:
    if isinstance(error, datasets.DataError):
      raise
    raise UsageError(str(error)) from None


def check_splits(config: TrainConfig, data: datasets.DataBundle) -> None:
  """Training needs a full batch and a non-empty validation split."""
  if len(data.train_indices) < config.run.batch_size:
    raise UsageError(f"The training set has {len(data.train_indices)} "
                     f"examples, fewer than --batch_size="
                     f"{config.run.batch_size}; use a smaller batch.")
  if len(data.validation_indices) == 0:
    raise UsageError("The validation split is empty; use a "
                     "--validation_split that keeps at least one example.")


def build_head(config: TrainConfig, class_counts: np.ndarray,
               num_classes: int) -> cfal.heads.Head:
  """The head the config names, with the data's class counts."""
  model = config.model
  try:
    return cfal.heads.build_head(
        model.head, num_classes=num_classes,
        embedding_dim=model.embedding_dim,
        class_counts=(None if class_counts is None
                      else [int(c) for c in class_counts]), seed=config.run.seed,
        **model.head_args)
  except (ValueError, TypeError) as error:
    message = str(error)
    if not message.startswith(("--head", "Unknown --head")):
      message = f"--head={model.head}: {message}"
    raise UsageError(message) from None


def build_backbone(config: TrainConfig, image_shape: tuple[int, int, int],
                   head: cfal.heads.Head) -> keras.Model:
  """The backbone the config names, shaped to what the head needs.

  A backbone that can end on the unit sphere (`normalize`) does so exactly
  when the head asks for unit-norm embeddings (`head.normalized_embeddings`:
  the angular-margin heads), unless `backbone_args` says otherwise.
  """
  model = config.model
  options = dict(model.backbone_args)
  spec = backbone_registry.BACKBONES.get(model.backbone)
  if (spec is not None and spec.option("normalize") is not None
      and "normalize" not in options):
    options["normalize"] = bool(head.normalized_embeddings)
  try:
    return backbone_factory.build_backbone(
        model.backbone, input_shape=image_shape,
        embedding_dim=model.embedding_dim, seed=config.run.seed, **options)
  except ValueError as error:
    message = str(error)
    if not message.startswith("--backbone"):
      message = f"--backbone={model.backbone}: {message}"
    raise UsageError(message) from None


def build_optimization(config: TrainConfig, total_steps: int,
                       backbone: keras.Model,
                       head: cfal.heads.Head) -> Optimization:
  """The optimizers of the run's parameter groups (`optimization.py`):
  one unless `head_learning_rate` or `freeze_backbone_steps` split them.

  Call it inside the strategy scope, then `.build()`.
  """
  opt = config.optimizer
  optimization = make_groups(
      parameter_parts(backbone, head), learning_rate=opt.learning_rate,
      head_learning_rate=opt.head_learning_rate,
      freeze_backbone_steps=opt.freeze_backbone_steps,
      optimizer_for=lambda rate, first: build_optimizer(
          config, total_steps, learning_rate=rate, first_step=first))
  if len(optimization.groups) > 1 and optimization.scales_loss:
    raise UsageError("--mixed_precision=float16 needs one loss scale for "
                     "the whole model: drop --head_learning_rate and "
                     "--freeze_backbone_steps, or use bfloat16.")
  return optimization


def build_optimizer(config: TrainConfig, total_steps: int, *,
                    learning_rate: float | None = None,
                    first_step: int = 0) -> keras.optimizers.Optimizer:
  """The Keras optimizer and learning-rate schedule of `config.optimizer`.

  Call it inside the strategy scope, then `optimizer.build(variables)`.
  float16 runs get a `LossScaleOptimizer`.

  Args:
    config: the run's configuration.
    total_steps: the run's length (the cosine decay's end).
    learning_rate: the peak rate (default `config.optimizer.learning_rate`;
      a parameter group can have its own).
    first_step: the step at which this optimizer's first update happens;
      its schedule is read at `iterations + first_step`.
  """
  opt = config.optimizer
  peak = opt.learning_rate if learning_rate is None else learning_rate
  lr: float | keras.optimizers.schedules.LearningRateSchedule
  lr = peak
  if opt.schedule == "cosine":
    decay = max(1, total_steps - opt.warmup_steps)
    if opt.warmup_steps:
      lr = keras.optimizers.schedules.CosineDecay(
          0.0, decay, warmup_target=peak, warmup_steps=opt.warmup_steps)
    else:
      lr = keras.optimizers.schedules.CosineDecay(peak, decay)
    if first_step:
      lr = OffsetSchedule(lr, first_step)
  elif opt.schedule != "constant":
    raise UsageError(f"Unknown --schedule={opt.schedule!r}; choose constant "
                     f"or cosine.")
  if opt.name == "adam":
    optimizer = keras.optimizers.Adam(lr)
  elif opt.name == "adamw":
    optimizer = keras.optimizers.AdamW(lr, weight_decay=opt.weight_decay)
  elif opt.name == "sgd":
    optimizer = keras.optimizers.SGD(lr, momentum=opt.momentum)
  else:
    raise UsageError(f"Unknown --optimizer={opt.name!r}; choose adam, adamw "
                     f"or sgd.")
  if config.run.mixed_precision == "float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def validation_dataset(built: Built, batch_size: int | None = None
                       ) -> tf.data.Dataset:
  """The validation split as batches (rebuild it for each evaluation)."""
  data = built.data
  return pipeline.eval_dataset(data.source, data.validation_indices,
                               batch_size=batch_size
                               or built.config.run.batch_size)


def train_iterator(built: Built, start_step: int):
  """The distributed training stream from `start_step`: every worker and
  replica takes its rows of the same global batch (a pure function of the
  seed and the step). The progressive sampler runs its schedule over
  `built.total_steps`."""
  config, data = built.config, built.data

  def make(input_context):
    return pipeline.train_dataset(
        data.source, data.train_indices,
        global_batch_size=config.run.batch_size, seed=config.run.seed,
        start_step=start_step, augment=config.data.augment,
        sampler=config.data.sampler, total_steps=built.total_steps,
        input_context=input_context)
  return iter(built.strategy.distribute_datasets_from_function(make))
