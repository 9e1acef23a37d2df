"""Train a backbone + max-margin head with explicit compiled steps.

    python train.py                                   # CFAL on Fashion-MNIST, a few minutes on 2 CPU cores
    python train.py --head=arcface --gpus=4           # mirrored over 4 GPUs
    python train.py --flagfile=flags/cfal_fashion_mnist_lt.flags
    tensorboard --logdir runs

Everything a run writes goes to --logdir (default runs/<dataset>-<head>):
event files (train/, validation/), checkpoints/ (latest and best/),
config.json (what eval.py rebuilds the model from) and export/ (a
SavedModel with `embed` and `classify` signatures). Rerunning with the same
--logdir resumes where the last checkpoint left off; SIGTERM or Ctrl-C saves
a checkpoint first (exit 143 / 130). Exit codes: 0 done, 1 bad data or a
stopped run (non-finite step, checkpoint not writable), 2 usage error.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags

FLAGS = flags.FLAGS

# Data.
flags.DEFINE_string("dataset", "fashion_mnist",
                    "fashion_mnist, mnist or folder:<path> (one subfolder "
                    "per class).")
flags.DEFINE_string("data_dir", None, "Where to look for the data first "
                    "(then $CFAL_DATA_DIR, system and Keras locations).")
flags.DEFINE_float("validation_split", 0.1, "Fraction of each class held out "
                   "of the training split for validation.")
flags.DEFINE_float("imbalance_ratio", 1.0, "R > 1 makes the training set "
                   "long-tailed: class c keeps n_max * R^(-c/(C-1)).")
flags.DEFINE_integer("image_size", None, "Resize folder images to this side "
                     "(default 112).")
flags.DEFINE_enum("augment", "none", ["none", "flip", "flip_rotate"],
                  "Training augmentation, seeded by --seed and the step.")
flags.DEFINE_float("max_bad_fraction", 0.01, "Folders: unreadable files are "
                   "skipped, but more than this fraction stops the run.")

# Model.
flags.DEFINE_string("backbone", "seed_cnn", "seed_cnn, prelu_cnn, resnet or "
                    "cct.")
flags.DEFINE_integer("embedding_dim", 64, "Embedding size.")
flags.DEFINE_string("head", "cfal", "softmax, focal, arcface, cosface, "
                    "sphereface, combined_margin, center_loss, affinity or "
                    "cfal.")
# Head hyper-parameters: passed on only when given, else the head's default.
flags.DEFINE_float("scale", None, "Logit scale s (margin heads).")
flags.DEFINE_float("margin", None, "ArcFace: radians; CosFace: cosine "
                   "margin; SphereFace: multiplier; Affinity/CFAL: lambda.")
flags.DEFINE_float("sigma", None, "Gaussian bandwidth (Affinity/CFAL).")
flags.DEFINE_float("gamma", None, "Focusing parameter (Focal/CFAL).")
flags.DEFINE_float("beta", None, "Effective-number beta for class weights.")
flags.DEFINE_float("alpha", None, "Center-loss center learning rate.")
flags.DEFINE_float("center_weight", None, "Weight of the center-loss term.")
flags.DEFINE_integer("num_centers", None, "Centers per class (Affinity/CFAL).")
flags.DEFINE_float("spread_weight", None, "Weight of the prototype-spread "
                   "regulariser R_w (Affinity/CFAL).")
flags.DEFINE_enum("center_update", None, ["alpha", "gradient"],
                  "How center-loss centers move.")
flags.DEFINE_float("m1", None, "CombinedMargin multiplicative margin.")
flags.DEFINE_float("m2", None, "CombinedMargin additive angular margin.")
flags.DEFINE_float("m3", None, "CombinedMargin additive cosine margin.")
HEAD_FLAGS = ("scale", "margin", "sigma", "gamma", "beta", "alpha",
              "center_weight", "num_centers", "spread_weight",
              "center_update", "m1", "m2", "m3")

# Optimisation.
flags.DEFINE_enum("optimizer", "adam", ["adam", "adamw", "sgd"], "Optimizer.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_enum("schedule", "cosine", ["constant", "cosine"],
                  "Learning-rate schedule after the warmup.")
flags.DEFINE_integer("warmup_steps", 0, "Linear warmup steps.")

# The run.
flags.DEFINE_string("logdir", None, "Run directory (default "
                    "runs/<dataset>-<head>); reusing one resumes it.")
flags.DEFINE_float("epochs", 2.0, "Training length in epochs.")
flags.DEFINE_integer("train_steps", None, "Training length in steps; "
                     "overrides --epochs.")
flags.DEFINE_integer("batch_size", 128, "Global batch size (all replicas).")
flags.DEFINE_integer("steps_per_loop", 50, "Steps per compiled call.")
flags.DEFINE_enum("step_mode", "auto", ["auto", "eager", "function", "xla"],
                  "How steps run; auto picks what is fastest on the device.")
flags.DEFINE_integer("eval_every", None, "Validate every N steps (default: "
                     "every epoch).")
flags.DEFINE_integer("checkpoint_every", 500, "Checkpoint every N steps.")
flags.DEFINE_integer("early_stopping_patience", 0, "Stop after N evaluations "
                     "without a better balanced accuracy (0: never).")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored",
                                          "multi_worker"],
                  "Distribution strategy (multi_worker reads $TF_CONFIG).")
flags.DEFINE_integer("gpus", 0, "Mirror over this many GPUs.")
flags.DEFINE_integer("cpu_replicas", 0, "Split the CPU into N logical "
                     "devices and mirror over them.")
flags.DEFINE_enum("mixed_precision", "float32",
                  ["float32", "bfloat16", "float16"],
                  "Backbone compute precision; heads stay float32.")
flags.DEFINE_integer("seed", 0, "Fixes init, split, data order, augmentation.")
flags.DEFINE_integer("projector_points", 2000, "Validation embeddings saved "
                     "for TensorBoard's projector.")
flags.DEFINE_bool("deterministic", False, "TensorFlow op determinism: a "
                  "killed and resumed run ends bit-identical to an "
                  "uninterrupted one (slower on GPUs; never XLA).")
flags.DEFINE_integer("skip_nonfinite_steps", 0, "Skip up to N steps whose "
                     "loss or gradients are not finite (never applying "
                     "them) instead of stopping at the first.")
flags.DEFINE_bool("verbose", False, "Show tracebacks for errors.")


def config_from_flags():
  """Turns the flags into the library's plain config objects."""
  # Imported here so `--help` stays fast.
  from cfal.data.datasets import DataConfig  # pylint: disable=import-outside-toplevel
  from cfal.training.config import (  # pylint: disable=import-outside-toplevel
      ModelConfig, OptimizerConfig, RunConfig, TrainConfig)

  head_args = {name: FLAGS[name].value for name in HEAD_FLAGS
               if FLAGS[name].value is not None}
  slug = re.sub(r"[^A-Za-z0-9_.-]+", "_",
                FLAGS.dataset.replace("folder:", "").strip("/"))
  logdir = FLAGS.logdir or os.path.join("runs", f"{slug}-{FLAGS.head}")
  return TrainConfig(
      data=DataConfig(name=FLAGS.dataset, data_dir=FLAGS.data_dir,
                      validation_split=FLAGS.validation_split,
                      imbalance_ratio=FLAGS.imbalance_ratio,
                      image_size=FLAGS.image_size, augment=FLAGS.augment,
                      seed=FLAGS.seed,
                      max_bad_fraction=FLAGS.max_bad_fraction),
      model=ModelConfig(backbone=FLAGS.backbone,
                        embedding_dim=FLAGS.embedding_dim, head=FLAGS.head,
                        head_args=head_args),
      optimizer=OptimizerConfig(name=FLAGS.optimizer,
                                learning_rate=FLAGS.learning_rate,
                                weight_decay=FLAGS.weight_decay,
                                momentum=FLAGS.momentum,
                                schedule=FLAGS.schedule,
                                warmup_steps=FLAGS.warmup_steps),
      run=RunConfig(logdir=logdir, epochs=FLAGS.epochs,
                    train_steps=FLAGS.train_steps,
                    batch_size=FLAGS.batch_size,
                    steps_per_loop=FLAGS.steps_per_loop,
                    step_mode=FLAGS.step_mode, eval_every=FLAGS.eval_every,
                    checkpoint_every=FLAGS.checkpoint_every,
                    early_stopping_patience=FLAGS.early_stopping_patience,
                    strategy=FLAGS.strategy, gpus=FLAGS.gpus,
                    cpu_replicas=FLAGS.cpu_replicas,
                    mixed_precision=FLAGS.mixed_precision, seed=FLAGS.seed,
                    projector_points=FLAGS.projector_points,
                    deterministic=FLAGS.deterministic,
                    skip_nonfinite_steps=FLAGS.skip_nonfinite_steps))


def check_flags() -> None:
  """Usage errors that need no TensorFlow: one line, exit 2."""
  positive = ("batch_size", "steps_per_loop", "checkpoint_every",
              "embedding_dim", "projector_points")
  for name in positive:
    if FLAGS[name].value < 1:
      raise_usage(f"--{name} ({FLAGS[name].value}) must be >= 1.")
  for name in ("train_steps", "eval_every"):
    if FLAGS[name].value is not None and FLAGS[name].value < 1:
      raise_usage(f"--{name} ({FLAGS[name].value}) must be >= 1.")
  if not 0.0 < FLAGS.validation_split < 1.0:
    raise_usage(f"--validation_split ({FLAGS.validation_split}) must be in "
                f"(0, 1): validation drives the best checkpoint and early "
                f"stopping.")
  if not FLAGS.imbalance_ratio >= 1.0:
    raise_usage(f"--imbalance_ratio ({FLAGS.imbalance_ratio}) must be >= 1 "
                f"(1 keeps the data balanced).")
  if not 0.0 <= FLAGS.max_bad_fraction <= 1.0:
    raise_usage(f"--max_bad_fraction ({FLAGS.max_bad_fraction}) must be in "
                f"[0, 1].")
  if FLAGS.skip_nonfinite_steps < 0:
    raise_usage(f"--skip_nonfinite_steps ({FLAGS.skip_nonfinite_steps}) must "
                f"be >= 0.")
  if FLAGS.epochs <= 0:
    raise_usage(f"--epochs ({FLAGS.epochs}) must be > 0.")
  if FLAGS.learning_rate <= 0:
    raise_usage(f"--learning_rate ({FLAGS.learning_rate}) must be > 0.")


def raise_usage(message: str) -> None:
  from cfal.errors import UsageError  # pylint: disable=import-outside-toplevel
  raise UsageError(message)


def main(argv) -> int:
  from cfal import cli  # pylint: disable=import-outside-toplevel

  def body():
    check_flags()
    from cfal.training.loop import train  # pylint: disable=import-outside-toplevel
    train(config_from_flags())

  return cli.run("train.py", argv, body, verbose=FLAGS.verbose)


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
