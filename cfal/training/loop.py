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
import re
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
from cfal.errors import Interrupted, TrainingError, UsageError
from cfal.metrics.classification import classification_report
from cfal.training import export, summaries
from cfal.training.config import TrainConfig, dtype_policy, op_determinism
from cfal.training.faults import nonfinite_message, nonfinite_variables
from cfal.training.interrupts import StopRequests, signal_name
from cfal.training.run_dir import RunLock, check_run_dir, write_atomically
from cfal.training.steps import Steps
from cfal.training.strategy import make_strategy, slow_bfloat16_note

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


def resolve_step_mode(mode: str, strategy: tf.distribute.Strategy, *,
                      deterministic: bool = False) -> str:
  """`auto` -> what was measured fastest on the devices present.

  On CPU, XLA made conv train steps about 2x slower than plain tf.function;
  on a GPU XLA usually wins. With several replicas the synchronized
  BatchNorm all-reduces inside the compiled forward pass, which XLA can
  only compile when every replica is a GPU; `auto` then stays with
  `function`, and an explicit `xla` over CPU replicas is refused. XLA has
  no deterministic MaxPool gradient, so a deterministic run never uses it.
  """
  replicas = strategy.num_replicas_in_sync
  gpus = bool(tf.config.list_physical_devices("GPU"))
  if mode == "auto":
    use_xla = gpus and replicas == 1 and not deterministic
    return "xla" if use_xla else "function"
  if mode == "xla" and deterministic:
    raise UsageError("--deterministic cannot use --step_mode=xla: XLA has no "
                     "deterministic MaxPool gradient; use --step_mode=function"
                     " (or auto).")
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


def train(config: TrainConfig, *, echo: Printer = print) -> RunResult:
  """Trains as `config` says; resumes if `config.run.logdir` has a run.

  The Keras dtype policy that `mixed_precision` needs is set for the run
  and restored afterwards; so is TensorFlow's op determinism, which
  `deterministic` turns on.

  Raises:
    UsageError: a configuration that cannot work, or a run directory in
      use by another live run or holding another model.
    DataError: missing or bad data.
    TrainingError: a non-finite step, or a checkpoint that could not be
      written; the last complete checkpoint is intact.
    Interrupted: SIGTERM/SIGINT arrived; a checkpoint was saved first.
  """
  run = config.run
  with dtype_policy(run.mixed_precision), op_determinism(run.deterministic):
    strategy = make_strategy(run.strategy, gpus=run.gpus,
                             cpu_replicas=run.cpu_replicas)
    mode = resolve_step_mode(run.step_mode, strategy,
                             deterministic=run.deterministic)
    if run.batch_size % strategy.num_replicas_in_sync:
      raise UsageError(f"--batch_size={run.batch_size} must be divisible by "
                       f"the {strategy.num_replicas_in_sync} replicas.")
    if run.skip_nonfinite_steps < 0:
      raise UsageError(f"--skip_nonfinite_steps ({run.skip_nonfinite_steps})"
                       f" must be >= 0.")
    logdir = pathlib.Path(run.logdir)
    if not is_chief(strategy):
      # Every worker takes part in saving (it runs collectives), but only
      # the chief writes the run directory; the others write to scratch.
      scratch = pathlib.Path(tempfile.mkdtemp(prefix="cfal-worker-"))
      if (logdir / "checkpoints").exists():
        shutil.copytree(logdir / "checkpoints", scratch / "checkpoints")
      try:
        return _Run(config, strategy, mode, scratch, lambda _: None,
                    chief=False).train()
      finally:
        shutil.rmtree(scratch, ignore_errors=True)
    slow_note = slow_bfloat16_note(run.mixed_precision)
    if slow_note:
      echo(f"warning: {slow_note}")
    with RunLock(logdir):
      return _Run(config, strategy, mode, logdir, echo, chief=True).train()


class _Run:
  """One training run: built and restored in `__init__`, run by `train`.

  Cadence invariants that make a killed run resume exactly:
    * compiled calls end on every evaluation and checkpoint step, so the
      steps at which things happen never depend on where a run resumed;
    * a checkpoint taken at an evaluation step always holds the state from
      *before* that evaluation, so a run resumed there evaluates again and
      does the same bookkeeping (best score, patience) an uninterrupted run
      did, on the same weights.
  """

  def __init__(self, config: TrainConfig, strategy: tf.distribute.Strategy,
               mode: str, logdir: pathlib.Path, echo: Printer, *,
               chief: bool):
    self.config, self.strategy, self.logdir = config, strategy, logdir
    self.echo, self.chief = echo, chief
    run = config.run
    check_run_dir(logdir, config)
    self.data = _load(config)
    for note in self.data.notes:
      echo(f"note: {note}")
    data = self.data
    if len(data.train_indices) < run.batch_size:
      raise UsageError(f"The training set has {len(data.train_indices)} "
                       f"examples, fewer than --batch_size={run.batch_size}; "
                       f"use a smaller batch.")
    if len(data.validation_indices) == 0:
      raise UsageError("The validation split is empty; use a "
                       "--validation_split that keeps at least one example.")
    self.per_epoch = pipeline.steps_per_epoch(len(data.train_indices),
                                              run.batch_size)
    self.total_steps = run.train_steps or max(
        1, math.ceil(run.epochs * self.per_epoch))
    self.eval_every = run.eval_every or self.per_epoch
    self._build(mode)
    self._restore()

  def _build(self, mode: str) -> None:
    config, run, data = self.config, self.config.run, self.data
    # A plain record, made outside the strategy scope: multi-worker
    # collectives cannot broadcast a string variable's initial value.
    identity = tf.Variable(config.model.identity(), trainable=False,
                           name="model_identity")
    with self.strategy.scope():
      keras.utils.set_random_seed(run.seed)
      try:
        self.backbone = cfal.backbones.build_backbone(
            config.model.backbone, input_shape=data.image_shape,
            embedding_dim=config.model.embedding_dim, seed=run.seed,
            **backbone_options(config))
      except ValueError as error:
        raise UsageError(
            f"--backbone={config.model.backbone}: {error}") from None
      self.head = build_head(config, data.class_counts, data.num_classes)
      self.optimizer = build_optimizer(config, self.total_steps)
      self.optimizer.build(list(self.backbone.trainable_variables)
                           + list(self.head.trainable_variables))
      counter = lambda name: tf.Variable(  # noqa: E731
          0, dtype=tf.int64, trainable=False, name=name)
      self.step = counter("step")
      # Evaluations since the best one (early stopping) and non-finite
      # steps skipped so far: both must survive a restart.
      self.evals_without_gain = counter("evals_without_gain")
      self.skipped = counter("skipped_steps")
      self.best = tf.Variable(-1.0, dtype=tf.float64, trainable=False,
                              name="best")
      self.checkpoint = tf.train.Checkpoint(
          backbone=self.backbone, head=self.head, optimizer=self.optimizer,
          step=self.step, best_balanced_accuracy=self.best,
          evals_without_gain=self.evals_without_gain,
          skipped_steps=self.skipped, model_identity=identity)
    self.latest = tf.train.CheckpointManager(
        self.checkpoint, self.logdir / "checkpoints", max_to_keep=3)
    self.best_manager = tf.train.CheckpointManager(
        self.checkpoint, self.logdir / "checkpoints" / "best", max_to_keep=1)
    self.steps = Steps(strategy=self.strategy, backbone=self.backbone,
                       head=self.head, optimizer=self.optimizer,
                       global_batch_size=run.batch_size, mode=mode)

  def _restore(self) -> None:
    path = self.latest.latest_checkpoint
    if path:
      try:
        self.checkpoint.restore(path).assert_existing_objects_matched()
      except (AssertionError, ValueError, tf.errors.OpError) as error:
        first = str(error).strip().splitlines()[0][:160]
        raise UsageError(f"Cannot resume {self.logdir} from {path} with "
                         f"these flags: {first} (use the run's own flags or "
                         f"a new --logdir).") from None
    if isinstance(self.strategy,
                  tf.distribute.MultiWorkerMirroredStrategy):
      _check_workers_agree(self.strategy, int(self.step.numpy()))
    if path:
      self.echo(f"Resuming {self.logdir} at step {int(self.step.numpy())}.")
    write_atomically(self.logdir / "config.json", self.config.to_json())

  # -- the cadence ----------------------------------------------------------

  def _is_eval_step(self, step: int) -> bool:
    return step % self.eval_every == 0 or step == self.total_steps

  def _is_checkpoint_step(self, step: int) -> bool:
    return (step % self.config.run.checkpoint_every == 0
            or step == self.total_steps)

  def _chunk(self, current: int) -> int:
    """Steps in the next compiled call: up to the next event, at most K."""
    n = min(self.config.run.steps_per_loop, self.total_steps - current)
    for every in (self.eval_every, self.config.run.checkpoint_every):
      n = min(n, every - current % every)
    return n

  # -- the run ----------------------------------------------------------------

  def train(self) -> RunResult:
    config, run, data = self.config, self.config.run, self.data
    self.writers = summaries.Writers(str(self.logdir))
    summaries.write_hparams(self.writers.train,
                            _hparams(config, self.steps.mode))
    start = int(self.step.numpy())
    dist = self.strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.train_dataset(
            data.source, data.train_indices,
            global_batch_size=run.batch_size, seed=run.seed,
            start_step=start, augment=config.data.augment,
            input_context=ctx))
    iterator = iter(dist)
    self.validation = eval_dataset_fn(data, run.batch_size)
    self.echo(f"Training {config.model.backbone} + {config.model.head} on "
              f"{data.name}: {len(data.train_indices)} training / "
              f"{len(data.validation_indices)} validation images, "
              f"{data.num_classes} classes; {self.total_steps} steps of "
              f"{run.batch_size} ({self.per_epoch} per epoch), "
              f"{self.strategy.num_replicas_in_sync} replica(s), step mode "
              f"{self.steps.mode}.")
    self.last_eval: dict = {}
    self.history: list[dict] = []
    stopped_early = False
    current = start
    with StopRequests() as stops:
      if 0 < start and self._is_eval_step(start):
        # Killed after the checkpoint of an evaluation step: evaluate again.
        stopped_early = self._validate(start)
      timer = _Timer(self.total_steps - start)
      while current < self.total_steps and not stopped_early:
        current = self._run_chunk(iterator, current, timer)
        if self._is_checkpoint_step(current) or self._is_eval_step(current):
          self._save(self.latest, current)
        if self._is_eval_step(current):
          stopped_early = self._validate(current)
        self.writers.flush()
        if stops.requested:
          self._stop_for_signal(stops.signum, current)
      self._save(self.latest, current)
      if stopped_early:
        self.echo(f"Stopping early: no better validation balanced accuracy "
                  f"in {run.early_stopping_patience} evaluations.")
      export_path = self._export(stopped_early)
    return RunResult(logdir=self.logdir, step=current,
                     validation=self.last_eval.get("report", {}),
                     best_balanced_accuracy=float(self.best.numpy()),
                     export_path=export_path if self.chief else None,
                     stopped_early=stopped_early, history=self.history,
                     is_chief=self.chief)

  def _run_chunk(self, iterator, current: int, timer: "_Timer") -> int:
    """One compiled call; returns the new step. Raises on a bad step."""
    run = self.config.run
    n = self._chunk(current)
    budget = run.skip_nonfinite_steps - int(self.skipped.numpy())
    began = time.perf_counter()
    results = self.steps.train_loop(iterator, tf.constant(n),
                                    tf.constant(max(budget, 0)))
    consumed = int(results["steps"])
    seconds = time.perf_counter() - began
    if int(results["fault"]):
      failing = current + consumed
      raise TrainingError(nonfinite_message(
          int(results["fault"]), failing, self.config,
          self.latest.latest_checkpoint))
    current += consumed
    self.step.assign(current)
    skipped = int(results["skipped"])
    if skipped:
      self.skipped.assign_add(skipped)
      self.echo(f"warning: skipped {skipped} non-finite step(s) before step "
                f"{current}; {int(self.skipped.numpy())} of "
                f"{run.skip_nonfinite_steps} allowed so far.")
    loss, accuracy = float(results["loss"]), float(results["accuracy"])
    self.history.append({"step": current, "loss": loss,
                         "accuracy": accuracy})
    scalars = {"loss": loss, "accuracy": accuracy,
               "learning_rate": float(self.optimizer.learning_rate),
               "skipped_steps": float(self.skipped.numpy())}
    # The first call of a process also traces and compiles: no rate, no ETA.
    first = not timer.timed
    if not first:
      scalars["examples_per_second"] = consumed * run.batch_size / seconds
    summaries.write_scalars(self.writers.train, scalars, current)
    speed = ("first call, compiling" if first else
             f"{scalars['examples_per_second']:.0f} examples/s  ETA "
             f"{timer.eta(consumed, seconds)}")
    if first:
      timer.skip(consumed)
    self.echo(f"step {current}/{self.total_steps}  epoch "
              f"{current / self.per_epoch:.2f}  loss {loss:.4f}  accuracy "
              f"{accuracy:.3f}  {speed}")
    return current

  def _validate(self, step: int) -> bool:
    """Evaluates, keeps the best model; True when patience has run out."""
    run = self.config.run
    self.last_eval = evaluate(self.steps, self.validation(), self.data, run)
    _write_eval(self.writers, self.logdir, self.last_eval, self.data,
                self.config, self.head, step)
    report = self.last_eval["report"]
    score = report["balanced_accuracy"]
    self.echo(f"validation at step {step}: accuracy {report['accuracy']:.4f}"
              f"  balanced accuracy {score:.4f}  macro F1 "
              f"{report['macro_f1']:.4f}")
    if score > float(self.best.numpy()):
      self.best.assign(score)
      self.evals_without_gain.assign(0)
      self._save(self.best_manager, step)
      return False
    self.evals_without_gain.assign_add(1)
    patience = run.early_stopping_patience
    return bool(patience) and int(self.evals_without_gain.numpy()) >= patience

  def _save(self, manager: tf.train.CheckpointManager, step: int) -> None:
    """Saves a checkpoint of finite variables, or says why it cannot."""
    previous = manager.latest_checkpoint
    if previous and previous.endswith(f"-{step}"):
      return   # already saved at this step (and never overwritten in place)
    bad = nonfinite_variables(self._all_variables())
    if bad:
      raise TrainingError(f"step {step}: {len(bad)} variable(s) hold NaN or "
                          f"Inf (e.g. {bad[0]}); not saving them. "
                          f"{previous or 'No earlier checkpoint'} is intact.")
    try:
      manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as error:
      _remove_unlisted(pathlib.Path(manager.directory), step)
      reason = _os_reason(error)
      kept = (f"the previous checkpoint {previous} is intact" if previous
              else "no earlier checkpoint exists")
      raise TrainingError(f"Could not write the checkpoint of step {step} to "
                          f"{manager.directory} ({reason}); {kept}. Free "
                          f"space and rerun the same command to resume."
                          ) from None

  def _all_variables(self) -> list[tf.Variable]:
    return (list(self.backbone.weights) + list(self.head.variables)
            + list(self.optimizer.variables))

  def _stop_for_signal(self, signum: int, step: int) -> None:
    self._save(self.latest, step)
    self.writers.flush()
    raise Interrupted(f"{signal_name(signum)}: saved "
                      f"{self.latest.latest_checkpoint} at step {step}; rerun "
                      f"the same command to resume.", signum)

  def _export(self, stopped_early: bool) -> pathlib.Path:
    if stopped_early and self.best_manager.latest_checkpoint:
      # Early stopping ran past the best model by `patience` evaluations:
      # export the best one (the latest checkpoint keeps the last state).
      self.checkpoint.read(self.best_manager.latest_checkpoint).expect_partial()
      self.echo(f"Exporting the best model, "
                f"{self.best_manager.latest_checkpoint}.")
    export_path = export.export_saved_model(
        self.logdir / "export", backbone=self.backbone, head=self.head,
        image_shape=self.data.image_shape, class_names=self.data.class_names)
    self.writers.flush()
    logdir = self.logdir
    self.echo(f"Done. TensorBoard logs: {logdir}  (view: tensorboard "
              f"--logdir {logdir} --host 127.0.0.1)")
    self.echo(f"Checkpoints: {logdir / 'checkpoints'} (best: "
              f"{logdir / 'checkpoints' / 'best'});  export: {export_path}")
    return export_path


def _load(config: TrainConfig) -> datasets.DataBundle:
  try:
    return datasets.load_data(config.data)
  except ValueError as error:
    if isinstance(error, datasets.DataError):
      raise
    raise UsageError(str(error)) from None


def _os_reason(error: Exception) -> str:
  """"No space left on device" out of TensorFlow's wrapped I/O errors."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = re.sub(r"\{\{.*?\}\}\s*", "", text)   # {{function_node ...}}
  text = re.sub(r"\s*\[Op:\w+\]$", "", text)
  return (text.rpartition("; ")[2] or text or type(error).__name__)[:200]


def _remove_unlisted(directory: pathlib.Path, step: int) -> None:
  """Deletes the pieces of a failed save of `step` the state never listed."""
  listed = tf.train.latest_checkpoint(str(directory)) or ""
  if listed.endswith(f"-{step}"):
    return
  for piece in directory.glob(f"ckpt-{step}[._]*"):
    if piece.is_dir():
      shutil.rmtree(piece, ignore_errors=True)
    else:
      piece.unlink(missing_ok=True)


def _check_workers_agree(strategy: tf.distribute.Strategy, step: int) -> None:
  """Every worker must restore the same step, or they train different runs."""
  mine = tf.constant(float(step))
  total = strategy.reduce(tf.distribute.ReduceOp.SUM,
                          strategy.run(lambda: mine), axis=None)
  replicas = strategy.num_replicas_in_sync
  if float(total) != step * replicas:
    raise TrainingError(f"This worker restored step {step} but the workers "
                        f"average {float(total) / replicas:g}: every worker "
                        f"must read the chief's checkpoints, so put --logdir "
                        f"on a filesystem they all share.")


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
  """ETA from the average time per step so far (compiling excluded)."""

  def __init__(self, remaining: int):
    self.remaining = remaining
    self.seconds = 0.0
    self.done = 0
    self.timed = False

  def skip(self, steps: int) -> None:
    """Counts steps whose time is not representative (the first call)."""
    self.remaining -= steps
    self.timed = True

  def eta(self, steps: int, seconds: float) -> str:
    self.timed = True
    self.done += steps
    self.seconds += seconds
    left = max(0, self.remaining - self.done) * self.seconds / max(self.done, 1)
    minutes, secs = divmod(int(left), 60)
    return f"{minutes}m{secs:02d}s"
