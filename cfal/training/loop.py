"""The training controller: build, restore, train, evaluate, save, export.

`train(config)` owns the cadence: K steps per compiled call, then in Python
the progress line and train summaries, validation every `eval_every` steps
(scalars, per-class recall, confusion-matrix and embedding images,
projector files), checkpoints every `checkpoint_every` steps plus the best
by validation balanced accuracy, early stopping, and the export at the end.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import pathlib
import shutil
import tempfile
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

import cfal.backbones
import cfal.heads
from cfal.data import datasets, pipeline
from cfal.errors import UsageError
from cfal.metrics.classification import classification_report
from cfal.training import export, summaries
from cfal.training.config import TrainConfig, dtype_policy
from cfal.training.steps import Steps
from cfal.training.strategy import make_strategy

Printer = Callable[[str], None]


@dataclasses.dataclass
class RunResult:
  """What a finished `train` call reports."""

  logdir: pathlib.Path
  step: int
  validation: dict
  best_balanced_accuracy: float
  export_path: pathlib.Path | None
  stopped_early: bool
  history: list[dict] = dataclasses.field(default_factory=list)
  is_chief: bool = True


def resolve_step_mode(mode: str, strategy: tf.distribute.Strategy) -> str:
  """`auto` -> what was measured fastest on the devices present.

  On CPU, XLA made conv train steps about 2x slower than plain tf.function;
  on a GPU XLA usually wins. With several replicas the synchronized
  BatchNorm all-reduces inside the compiled forward pass, which XLA can
  only compile when every replica is a GPU; `auto` then stays with
  `function`, and an explicit `xla` over CPU replicas is refused.
  """
  replicas = strategy.num_replicas_in_sync
  gpus = bool(tf.config.list_physical_devices("GPU"))
  if mode == "auto":
    return "xla" if gpus and replicas == 1 else "function"
  if mode == "xla" and replicas > 1 and not gpus:
    raise UsageError(f"--step_mode=xla cannot compile the cross-replica "
                     f"BatchNorm of {replicas} CPU replicas; use "
                     f"--step_mode=function (or auto).")
  return mode


def build_head(config: TrainConfig, class_counts: np.ndarray,
               num_classes: int) -> cfal.heads.Head:
  """The head named in the config, with class counts where it takes them."""
  model = config.model
  if model.head not in cfal.heads.HEADS:
    raise UsageError(f"Unknown --head={model.head!r}; choose one of "
                     f"{', '.join(sorted(cfal.heads.HEADS))}.")
  cls = cfal.heads.HEADS[model.head]
  accepted = inspect.signature(cls.__init__).parameters
  args = dict(model.head_args)
  unknown = sorted(k for k in args if k not in accepted)
  if unknown:
    raise UsageError(f"--head={model.head} takes no {', '.join(unknown)}; it "
                     f"takes {', '.join(k for k in accepted if k not in ('self', 'num_classes', 'embedding_dim', 'name', 'class_counts'))}.")
  if "class_counts" in accepted and "alpha" not in args:
    args["class_counts"] = [int(c) for c in class_counts]
  try:
    return cls(num_classes=num_classes, embedding_dim=model.embedding_dim,
               seed=config.run.seed, **args)
  except (ValueError, TypeError) as error:
    raise UsageError(f"--head={model.head}: {error}") from None


def backbone_options(config: TrainConfig) -> dict:
  """Backbone options implied by the head.

  The seed CNN ends on the unit sphere for the angular-margin heads (the
  ArcFace notebook's sphere pictures); Euclidean heads (center loss,
  affinity, CFAL) need unnormalised embeddings, and so does the linear
  softmax, whose logits a unit-norm input would cap.
  """
  if config.model.backbone != "seed_cnn":
    return {}
  head = cfal.heads.HEADS.get(config.model.head)
  return {"normalize": bool(head and issubclass(head,
                                                cfal.heads.CombinedMargin))}


def build_optimizer(config: TrainConfig,
                    total_steps: int) -> keras.optimizers.Optimizer:
  opt = config.optimizer
  lr: float | keras.optimizers.schedules.LearningRateSchedule
  lr = opt.learning_rate
  if opt.schedule == "cosine":
    decay = max(1, total_steps - opt.warmup_steps)
    if opt.warmup_steps:
      lr = keras.optimizers.schedules.CosineDecay(
          0.0, decay, warmup_target=opt.learning_rate,
          warmup_steps=opt.warmup_steps)
    else:
      lr = keras.optimizers.schedules.CosineDecay(opt.learning_rate, decay)
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


def _check_run_dir(logdir: pathlib.Path, config: TrainConfig) -> None:
  """A run directory belongs to one model: refuse to resume another."""
  saved = logdir / "config.json"
  if not saved.exists():
    return
  old = TrainConfig.load(logdir)
  for field in ("backbone", "head", "embedding_dim"):
    a, b = getattr(old.model, field), getattr(config.model, field)
    if a != b:
      raise UsageError(f"{logdir} holds a run with {field}={a}, not {b}: "
                       f"use a new --logdir or the same {field}.")
  # The split, the long tail and the data order depend on these; changing
  # them on resume would mix validation examples into training.
  old_data = dataclasses.replace(old.data, data_dir=None)
  new_data = dataclasses.replace(config.data, data_dir=None)
  for field in dataclasses.fields(old_data):
    a, b = getattr(old_data, field.name), getattr(new_data, field.name)
    if a != b:
      raise UsageError(f"{logdir} was trained with {field.name}={a}, not {b}:"
                       f" resume with the same data flags or use a new "
                       f"--logdir.")
  for field in ("seed", "batch_size", "mixed_precision"):
    a, b = getattr(old.run, field), getattr(config.run, field)
    if a != b:
      raise UsageError(f"{logdir} was trained with --{field}={a}, not {b}: "
                       f"resume with the same value or use a new --logdir.")


def train(config: TrainConfig, *, echo: Printer = print) -> RunResult:
  """Trains as `config` says; resumes if `config.run.logdir` has a run.

  The Keras dtype policy that `mixed_precision` needs is set for the run
  and restored afterwards.
  """
  with dtype_policy(config.run.mixed_precision):
    return _train(config, echo)


def _train(config: TrainConfig, echo: Printer) -> RunResult:
  run = config.run
  strategy = make_strategy(run.strategy, gpus=run.gpus,
                           cpu_replicas=run.cpu_replicas)
  mode = resolve_step_mode(run.step_mode, strategy)
  if run.batch_size % strategy.num_replicas_in_sync:
    raise UsageError(f"--batch_size={run.batch_size} must be divisible by the "
                     f"{strategy.num_replicas_in_sync} replicas.")
  logdir = pathlib.Path(run.logdir)
  chief = is_chief(strategy)
  if not chief:
    # Every worker takes part in saving (it runs collectives), but only the
    # chief writes the run directory; the others write to scratch.
    echo = lambda message: None  # noqa: E731
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="cfal-worker-"))
    if (logdir / "checkpoints").exists():
      shutil.copytree(logdir / "checkpoints", scratch / "checkpoints")
    logdir = scratch
  _check_run_dir(logdir, config)

  try:
    data = datasets.load_data(config.data)
  except ValueError as error:
    if isinstance(error, datasets.DataError):
      raise
    raise UsageError(str(error)) from None
  for note in data.notes:
    echo(f"note: {note}")
  if len(data.train_indices) < run.batch_size:
    raise UsageError(f"The training set has {len(data.train_indices)} "
                     f"examples, fewer than --batch_size={run.batch_size}; "
                     f"use a smaller batch.")
  if len(data.validation_indices) == 0:
    raise UsageError("The validation split is empty; use a "
                     "--validation_split that keeps at least one example.")
  per_epoch = pipeline.steps_per_epoch(len(data.train_indices),
                                       run.batch_size)
  total_steps = run.train_steps or max(1, math.ceil(run.epochs * per_epoch))
  eval_every = run.eval_every or per_epoch
  counts = data.class_counts

  # A plain record, made outside the strategy scope: multi-worker
  # collectives cannot broadcast a string variable's initial value.
  identity = tf.Variable(config.model.identity(), trainable=False,
                         name="model_identity")
  with strategy.scope():
    keras.utils.set_random_seed(run.seed)
    try:
      backbone = cfal.backbones.build_backbone(
          config.model.backbone, input_shape=data.image_shape,
          embedding_dim=config.model.embedding_dim, seed=run.seed,
          **backbone_options(config))
    except ValueError as error:
      raise UsageError(f"--backbone={config.model.backbone}: {error}") from None
    head = build_head(config, counts, data.num_classes)
    optimizer = build_optimizer(config, total_steps)
    variables = list(backbone.trainable_variables) + list(
        head.trainable_variables)
    optimizer.build(variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best")
    checkpoint = tf.train.Checkpoint(backbone=backbone, head=head,
                                     optimizer=optimizer, step=step,
                                     best_balanced_accuracy=best,
                                     model_identity=identity)

  latest = tf.train.CheckpointManager(checkpoint, logdir / "checkpoints",
                                      max_to_keep=3)
  best_manager = tf.train.CheckpointManager(
      checkpoint, logdir / "checkpoints" / "best", max_to_keep=1)
  if latest.latest_checkpoint:
    try:
      checkpoint.restore(
          latest.latest_checkpoint).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
      first = str(error).strip().splitlines()[0][:160]
      raise UsageError(f"Cannot resume {logdir} from "
                       f"{latest.latest_checkpoint} with these flags: {first}"
                       f" (use the run's own flags or a new --logdir).") from None
    echo(f"Resuming {logdir} at step {int(step.numpy())}.")
  logdir.mkdir(parents=True, exist_ok=True)
  (logdir / "config.json").write_text(config.to_json())

  steps = Steps(strategy=strategy, backbone=backbone, head=head,
                optimizer=optimizer, global_batch_size=run.batch_size,
                mode=mode)
  writers = summaries.Writers(str(logdir))
  summaries.write_hparams(writers.train, _hparams(config, mode))

  start = int(step.numpy())
  dist = strategy.distribute_datasets_from_function(
      lambda ctx: pipeline.train_dataset(
          data.source, data.train_indices, global_batch_size=run.batch_size,
          seed=run.seed, start_step=start, augment=config.data.augment,
          input_context=ctx))
  iterator = iter(dist)
  validation = eval_dataset_fn(data, run.batch_size)
  echo(f"Training {config.model.backbone} + {config.model.head} on "
       f"{data.name}: {len(data.train_indices)} training / "
       f"{len(data.validation_indices)} validation images, "
       f"{data.num_classes} classes; {total_steps} steps of "
       f"{run.batch_size} ({per_epoch} per epoch), "
       f"{strategy.num_replicas_in_sync} replica(s), step mode {mode}.")

  patience_left = run.early_stopping_patience
  stopped_early = False
  last_eval: dict = {}
  timer = _Timer(total_steps - start)
  current = start
  history = []
  while current < total_steps:
    n = min(run.steps_per_loop, total_steps - current)
    began = time.perf_counter()
    results = steps.train_loop(iterator, tf.constant(n))
    loss = float(results["loss"])
    accuracy = float(results["accuracy"])
    seconds = time.perf_counter() - began
    current += n
    step.assign(current)
    rate = n * run.batch_size / seconds
    history.append({"step": current, "loss": loss, "accuracy": accuracy})
    lr = float(optimizer.learning_rate)
    summaries.write_scalars(writers.train, {
        "loss": loss, "accuracy": accuracy, "learning_rate": lr,
        "examples_per_second": rate}, current)
    echo(f"step {current}/{total_steps}  epoch {current / per_epoch:.2f}  "
         f"loss {loss:.4f}  accuracy {accuracy:.3f}  {rate:.0f} examples/s  "
         f"ETA {timer.eta(n, seconds)}")

    # Checkpoint before evaluating: a failure in evaluation never costs
    # the steps since the last checkpoint.
    saved = current % run.checkpoint_every < n or current == total_steps
    if saved:
      latest.save(checkpoint_number=current)
    if current % eval_every < n or current == total_steps:
      last_eval = evaluate(steps, validation(), data, run)
      _write_eval(writers, logdir, last_eval, data, config, head, current)
      score = last_eval["report"]["balanced_accuracy"]
      echo(f"validation at step {current}: accuracy "
           f"{last_eval['report']['accuracy']:.4f}  balanced accuracy "
           f"{score:.4f}  macro F1 {last_eval['report']['macro_f1']:.4f}")
      if score > float(best.numpy()):
        best.assign(score)
        best_manager.save(checkpoint_number=current)
        if saved:   # keep the recorded best score in step with best/
          latest.save(checkpoint_number=current)
        patience_left = run.early_stopping_patience
      elif run.early_stopping_patience:
        patience_left -= 1
        if patience_left <= 0:
          stopped_early = True
    if stopped_early and not saved:
      latest.save(checkpoint_number=current)
    writers.flush()
    if stopped_early:
      echo(f"Stopping early: no better validation balanced accuracy in "
           f"{run.early_stopping_patience} evaluations.")
      break

  if not latest.latest_checkpoint:
    latest.save(checkpoint_number=current)
  if stopped_early and best_manager.latest_checkpoint:
    # Early stopping ran past the best model by `patience` evaluations:
    # export the best one (the latest checkpoint keeps the last state).
    checkpoint.read(best_manager.latest_checkpoint).expect_partial()
    echo(f"Exporting the best model, {best_manager.latest_checkpoint}.")
  export_path = export.export_saved_model(
      logdir / "export", backbone=backbone, head=head,
      image_shape=data.image_shape, class_names=data.class_names)
  writers.flush()
  if not chief:
    shutil.rmtree(logdir, ignore_errors=True)
  echo(f"Done. TensorBoard logs: {logdir}  (view: tensorboard --logdir "
       f"{logdir} --host 127.0.0.1)")
  echo(f"Checkpoints: {logdir / 'checkpoints'} (best: "
       f"{logdir / 'checkpoints' / 'best'});  export: {export_path}")
  return RunResult(logdir=logdir, step=current,
                   validation=last_eval.get("report", {}),
                   best_balanced_accuracy=float(best.numpy()),
                   export_path=export_path if chief else None,
                   stopped_early=stopped_early, history=history,
                   is_chief=chief)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True unless this process is a non-chief worker of a cluster."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return (not has_chief and resolver.task_type == "worker"
          and resolver.task_id == 0)


def eval_dataset_fn(data: datasets.DataBundle, batch_size: int):
  """A factory for the validation dataset (rebuilt for each evaluation)."""
  def make():
    return pipeline.eval_dataset(data.source, data.validation_indices,
                                 batch_size=batch_size)
  return make


def evaluate(steps: Steps, dataset: tf.data.Dataset,
             data: datasets.DataBundle, run) -> dict:
  """Runs a dataset through the compiled eval step; reduces on the host."""
  strategy = steps.strategy
  confusion = np.zeros((data.num_classes, data.num_classes), np.int64)
  loss_sum, count = 0.0, 0
  kept_embeddings, kept_labels = [], []
  kept = 0
  for batch in strategy.experimental_distribute_dataset(dataset):
    embeddings, labels, _, loss, cm = steps.eval_step(batch)
    confusion += strategy.reduce(tf.distribute.ReduceOp.SUM, cm,
                                 axis=None).numpy().astype(np.int64)
    loss_sum += float(strategy.reduce(tf.distribute.ReduceOp.SUM, loss,
                                      axis=None))
    for emb, lab in zip(strategy.experimental_local_results(embeddings),
                        strategy.experimental_local_results(labels)):
      count += int(lab.shape[0])
      if kept < run.projector_points:
        kept_embeddings.append(emb.numpy())
        kept_labels.append(lab.numpy())
        kept += int(lab.shape[0])
  report = classification_report(confusion, data.class_names)
  # The confusion matrix is summed over every replica of every worker;
  # `count` only over this worker's.
  report["loss"] = loss_sum / max(int(confusion.sum()), 1)
  return {"report": report, "confusion": confusion,
          "embeddings": np.concatenate(kept_embeddings)[:run.projector_points],
          "labels": np.concatenate(kept_labels)[:run.projector_points]}


def _write_eval(writers, logdir, result, data, config, head, step) -> None:
  from cfal.viz import plots  # pylint: disable=import-outside-toplevel
  report = result["report"]
  summaries.write_scalars(writers.validation, {
      "loss": report["loss"], "accuracy": report["accuracy"],
      "balanced_accuracy": report["balanced_accuracy"],
      "macro_f1": report["macro_f1"]}, step)
  recalls = [report["per_class"][name]["recall"] for name in data.class_names]
  summaries.write_per_class(writers.validation, "per_class_recall", recalls,
                            data.class_names, step)
  title = (f"{config.model.head} head, {config.model.backbone} on "
           f"{data.name} - validation, step {step}")
  summaries.write_image(writers.validation, "confusion_matrix",
                        plots.figure_to_image_tensor(
                            plots.confusion_matrix_figure(
                                result["confusion"], data.class_names, title)),
                        step)
  summaries.write_image(writers.validation, "embeddings",
                        plots.figure_to_image_tensor(plots.embedding_figure(
                            result["embeddings"], result["labels"],
                            data.class_names, title,
                            prototypes=head.prototypes.numpy(),
                            metric=head.embedding_metric)), step)
  summaries.write_projector(str(logdir), result["embeddings"],
                            result["labels"], data.class_names)


def _hparams(config: TrainConfig, mode: str) -> dict:
  values = {"head": config.model.head, "backbone": config.model.backbone,
            "embedding_dim": config.model.embedding_dim,
            "dataset": config.data.name,
            "imbalance_ratio": config.data.imbalance_ratio,
            "batch_size": config.run.batch_size,
            "learning_rate": config.optimizer.learning_rate,
            "optimizer": config.optimizer.name, "step_mode": mode,
            "mixed_precision": config.run.mixed_precision,
            "seed": config.run.seed}
  values.update({f"head_{k}": v for k, v in config.model.head_args.items()})
  return values


class _Timer:
  """ETA from the average time per step so far."""

  def __init__(self, remaining: int):
    self.remaining = remaining
    self.seconds = 0.0
    self.done = 0

  def eta(self, steps: int, seconds: float) -> str:
    self.done += steps
    self.seconds += seconds
    left = max(0, self.remaining - self.done) * self.seconds / max(self.done, 1)
    minutes, secs = divmod(int(left), 60)
    return f"{minutes}m{secs:02d}s"
