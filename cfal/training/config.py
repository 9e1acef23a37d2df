"""Plain configuration objects: what train.py turns its flags into.

The library never reads flags. A run's `TrainConfig` is written to
`<logdir>/config.json`, from which eval.py (and a resumed run) rebuild it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from typing import Any, Iterator

from cfal.data.config import DataConfig
from cfal.heads.registry import former_defaults, recorded_defaults

@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Backbone and head.

  Attributes:
    backbone: a name in `cfal.backbones.BACKBONES`.
    embedding_dim: embedding size D.
    head: a name in `cfal.heads.HEADS`.
    head_args: head options given explicitly (scale, margin, gamma,
      class_weighting, ...; see `cfal.heads.registry`), plus, filled in on
      construction, the head's defaults that have changed since cfal first
      recorded runs (`cfal.heads.registry.CHANGED_DEFAULTS`, e.g. CFAL's
      sigma); the head's own defaults fill the rest. Changing `head` with
      `dataclasses.replace` keeps the filled-in options: build a new
      ModelConfig instead. Class counts come from the data.
    backbone_args: backbone options given explicitly (see
      `cfal.backbones.registry`).
    pretrained: where a new run's backbone weights come from: "imagenet"
      (Keras Applications backbones), a Keras weights file, another cfal
      run's directory or a checkpoint prefix; None trains from scratch.
      Used once, when the run starts (a resumed run has its own weights).
  """

  backbone: str = "seed_cnn"
  embedding_dim: int = 64
  head: str = "cfal"
  head_args: dict[str, Any] = dataclasses.field(default_factory=dict)
  backbone_args: dict[str, Any] = dataclasses.field(default_factory=dict)
  pretrained: str | None = None

  def __post_init__(self):
    # Defaults that have changed are recorded, so a resume keeps them.
    object.__setattr__(self, "head_args", {
        **recorded_defaults(self.head), **self.head_args})

  def identity(self) -> str:
    """What a checkpoint records so it is never restored into another model
    (heads can share variable shapes: ArcFace and CFAL both hold [C, D])."""
    return (f"head={self.head} backbone={self.backbone} "
            f"embedding_dim={self.embedding_dim}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Keras optimizer and learning-rate schedule (warmup, then cosine)."""

  name: str = "adam"
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4      # adamw only
  momentum: float = 0.9           # sgd only
  schedule: str = "cosine"
  warmup_steps: int = 0
  # Parameter groups (cfal.training.optimization): the head's own peak
  # rate (None: learning_rate), and how many steps the backbone's body
  # stays frozen while the projection and the head train.
  head_learning_rate: float | None = None
  freeze_backbone_steps: int = 0
  # Deferred re-weighting (Cao et al. 2019, cfal.training.reweighting):
  # from this step (or epoch, converted with the run's steps per epoch as
  # `RunConfig.epochs` is; at most one of the two) every example's loss is
  # multiplied by its class's effective-number weight with this beta. A
  # switch on the run's clock like `freeze_backbone_steps`, so it lives
  # here, and resuming with other values is refused like any optimizer
  # change unless `allow_config_change`.
  reweight_from_step: int | None = None
  reweight_from_epoch: float | None = None
  reweight_beta: float = 0.9999


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Length, cadence, devices and where everything goes.

  Attributes:
    logdir: run directory: event files, checkpoints, config, export.
    epochs: training length in epochs of the training set.
    train_steps: training length in steps; overrides `epochs` when set.
    batch_size: the global batch over all replicas.
    steps_per_loop: steps per compiled call.
    step_mode: "auto", "eager", "function" or "xla".
    eval_every: validation cadence in steps (None: once per epoch).
    checkpoint_every: checkpoint cadence in steps.
    early_stopping_patience: stop after this many evaluations without a
      better validation balanced accuracy (0: never).
    strategy: "default", "mirrored" or "multi_worker".
    gpus: mirror over this many GPUs.
    cpu_replicas: split the CPU into this many logical devices and mirror.
    mixed_precision: "float32", "bfloat16" or "float16" for the backbone.
    seed: fixes initialisation, data order and augmentation.
    projector_points: validation embeddings written for the projector.
    deterministic: TensorFlow op determinism, so that a resumed run ends
      bit-identical to an uninterrupted one (slower on GPUs).
    skip_nonfinite_steps: how many non-finite steps a run may skip (never
      applying them) before it stops; 0 stops at the first.
    allow_config_change: resume even though the head, backbone or
      optimizer settings or the data sampler differ from the run's; the
      change is recorded in config.json (`TrainConfig.changes`).
  """

  logdir: str = "runs/default"
  epochs: float = 2.0
  train_steps: int | None = None
  batch_size: int = 128
  steps_per_loop: int = 50
  step_mode: str = "auto"
  eval_every: int | None = None
  checkpoint_every: int = 500
  early_stopping_patience: int = 0
  strategy: str = "default"
  gpus: int = 0
  cpu_replicas: int = 0
  mixed_precision: str = "float32"
  seed: int = 0
  projector_points: int = 2000
  deterministic: bool = False
  skip_nonfinite_steps: int = 0
  allow_config_change: bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A run's whole configuration, as config.json records it.

  Attributes:
    data, model, optimizer, run: the settings.
    changes: settings changed on resume with `allow_config_change`, each
      `{"step": N, "changed": {"optimizer.learning_rate": [old, new]}}`.
  """

  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  run: RunConfig = RunConfig()
  changes: tuple = ()

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "TrainConfig":
    raw = json.loads(text)
    model = dict(raw["model"])
    # A run recorded before a default changed ran with the former one.
    model["head_args"] = {**former_defaults(model.get("head", "")),
                          **model.get("head_args", {})}
    return cls(data=DataConfig(**raw["data"]),
               model=ModelConfig(**model),
               optimizer=OptimizerConfig(**raw["optimizer"]),
               run=RunConfig(**raw["run"]),
               changes=tuple(raw.get("changes", ())))

  @classmethod
  def load(cls, logdir: str | pathlib.Path) -> "TrainConfig":
    return cls.from_json((pathlib.Path(logdir) / "config.json").read_text())


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
  """Sets Keras's global dtype policy for `precision`, restoring it after.

  The backbone follows the policy ("mixed_bfloat16", "mixed_float16"); the
  heads always compute in float32.
  """
  import keras  # pylint: disable=import-outside-toplevel
  previous = keras.mixed_precision.global_policy()
  if precision != "float32":
    keras.mixed_precision.set_global_policy(f"mixed_{precision}")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
  """Turns on TensorFlow's op determinism for a run, restoring it after.

  The public API can only switch determinism on, for the whole process;
  left on, it would make later XLA steps in the same process fail (XLA has
  no deterministic MaxPool gradient). The switch back uses the function
  that `tf.config.experimental.enable_op_determinism` itself lives beside.
  """
  # pylint: disable=import-outside-toplevel
  from tensorflow.python.framework import config as tf_config
  previous = tf_config.is_op_determinism_enabled()
  if enabled and not previous:
    tf_config.enable_op_determinism()
  try:
    yield
  finally:
    if enabled and not previous:
      tf_config.disable_op_determinism()
