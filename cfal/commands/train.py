"""cfal-train: train a backbone + max-margin head with explicit compiled steps.

    cfal-train                                  # CFAL on Fashion-MNIST, a few minutes on 2 CPU cores
    cfal-train --head=arcface --gpus=4          # mirrored over 4 GPUs
    cfal-train --flagfile=flags/fashion_mnist_lt/cfal.flags

In a clone of the repository `python train.py ...` is the same program;
the recipes are the files under its flags/ folder.

Everything a run writes goes to --logdir (default runs/<dataset>-<head>):
event files (train/, validation/), checkpoints/ (latest and best/),
config.json (what cfal-eval rebuilds the model from) and export/ (a
SavedModel whose serving_default signature classifies images). Rerunning
with the same --logdir resumes where the last checkpoint left off; SIGTERM
or Ctrl-C saves a checkpoint first (exit 143 / 130). Exit codes: 0 done, 1
bad data or a stopped run (non-finite step, checkpoint not writable), 2
usage error.
"""

from __future__ import annotations

import os
import re

from absl import flags

from cfal.backbones.registry import BACKBONES
from cfal.heads.registry import HEADS

FLAGS = flags.FLAGS

# Data.
flags.DEFINE_string("dataset", "fashion_mnist",
                    "fashion_mnist, mnist, folder:<path> (one subfolder "
                    "per class) or csv:<path> (a manifest with columns "
                    "path,label[,group], paths relative to its folder).")
flags.DEFINE_string("group_by", None, "Hold out whole groups (slides, "
                    "patients) for validation: a regular expression with "
                    "(?P<group>...) searched in each file's path relative "
                    "to the folder, e.g. 'TCGA-(?P<group>..-....)', or csv "
                    "for the manifest's group column.")
flags.DEFINE_string("test_dataset", None, "An external test set for a "
                    "folder: or csv: training set (folder:<path> or "
                    "csv:<path>, the same classes, e.g. CRC-VAL-HE-7K); "
                    "eval --split=test uses it.")
flags.DEFINE_bool("cache", False, "Keep the decoded training and validation "
                  "images in memory (small sets; the same batches).")
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
flags.DEFINE_string("sampler", "instance", "How training batches pick "
                    "examples: instance (every example equally likely, a "
                    "new permutation each epoch), class_balanced (each "
                    "class equally likely, then one of its examples), "
                    "square_root (class c with probability proportional to "
                    "sqrt(n_c)) or progressive (from instance to "
                    "class_balanced over the run: (1 - t/T) n_c/N + "
                    "(t/T)/C at step t of T). Classes without training "
                    "examples are never drawn; an epoch is N // batch_size "
                    "steps for every sampler.")
flags.DEFINE_float("max_bad_fraction", 0.01, "Folders: unreadable files are "
                   "skipped, but more than this fraction stops the run.")

# Model.
flags.DEFINE_string("backbone", "seed_cnn", "One of: " + ", ".join(
    f"{name} ({spec.summary})" for name, spec in BACKBONES.items()))
flags.DEFINE_integer("embedding_dim", 64, "Embedding size.")
flags.DEFINE_string("pretrained", None, "Start the backbone from: imagenet "
                    "(the Keras Applications backbones; Keras downloads the "
                    "weights once into $KERAS_HOME/models), a Keras weights "
                    "file (.h5, .weights.h5), another cfal run's directory "
                    "(its best checkpoint, else latest) or a checkpoint "
                    "prefix. Only a new run uses it.")
def _describe(option) -> str:
  """"int >= 1", "float in [0, 1)", "bool", "flatten|avg"."""
  if option.choices:
    return "|".join(option.choices)
  kind = {"ints": "ints", "floats": "floats"}.get(option.type, option.type)
  if option.low is not None and option.high is None:
    return f"{kind} {'>' if option.low_open else '>='} {option.low:g}"
  text = option.range_text()
  return f"{kind} in {text}" if text else kind


flags.DEFINE_string("backbone_args", "", "Backbone options as "
                    "name=value,... (lists as 1;2;3), e.g. "
                    "--backbone=resnet --backbone_args=width=32,"
                    "depth_per_stage=1;1;1. They are: " + "; ".join(
                        f"{name}: " + (", ".join(
                            f"{o.name} ({_describe(o)})"
                            for o in spec.options) or "none")
                        for name, spec in BACKBONES.items()) + ".")
flags.DEFINE_string("head", "cfal", "One of: " + ", ".join(
    f"{name} ({spec.summary.rstrip('.')})" for name, spec in HEADS.items()))


def _define_head_flags() -> tuple[str, ...]:
  """One flag per head option declared in cfal.heads.registry.

  A name means the same in every head that takes it; unset flags leave
  the head's own default. Returns the flag names.
  """
  takers: dict[str, list[str]] = {}
  options = {}
  helps: dict[str, list[str]] = {}
  for name, spec in HEADS.items():
    for option in spec.options:
      takers.setdefault(option.name, []).append(name)
      options.setdefault(option.name, option)
      if option.help not in helps.setdefault(option.name, []):
        helps[option.name].append(option.help)
  for key, option in options.items():
    heads = ("every head" if len(takers[key]) == len(HEADS)
             else ", ".join(takers[key]))
    # A name shared with a head-specific meaning (margin) lists each.
    text = f"{' '.join(helps[key])} ({heads})"
    if option.type == "float":
      flags.DEFINE_float(key, None, text)
    elif option.type == "int":
      flags.DEFINE_integer(key, None, text)
    elif option.type == "bool":
      flags.DEFINE_bool(key, None, text)
    else:   # str (checked against its choices later) and lists ("1,2,3")
      flags.DEFINE_string(key, None, text)
  return tuple(options)


HEAD_OPTION_FLAGS = _define_head_flags()

# Optimisation.
flags.DEFINE_enum("optimizer", "adam", ["adam", "adamw", "sgd"], "Optimizer.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_enum("schedule", "cosine", ["constant", "cosine"],
                  "Learning-rate schedule after the warmup.")
flags.DEFINE_integer("warmup_steps", 0, "Linear warmup steps.")
flags.DEFINE_float("head_learning_rate", None, "The head's own peak learning "
                   "rate (its prototypes), on the same schedule; default "
                   "--learning_rate.")
flags.DEFINE_integer("freeze_backbone_steps", 0, "Train only the backbone's "
                     "projection and the head for this many steps (the "
                     "body in inference mode), then everything.")
flags.DEFINE_float("reweight_from_epoch", None, "Deferred re-weighting "
                   "(DRW, Cao et al. 2019): from this epoch on, multiply "
                   "each example's loss by its class's effective-number "
                   "weight (1 - beta) / (1 - beta^n_c), weights summing to "
                   "the number of classes; before it, the head's own loss. "
                   "Any head without its own class weights "
                   "(--class_weighting=none for focal and cfal).")
flags.DEFINE_integer("reweight_from_step", None, "Deferred re-weighting from "
                     "this step on (instead of --reweight_from_epoch).")
flags.DEFINE_float("reweight_beta", None, "Effective-number beta of the "
                   "deferred re-weighting, in [0, 1) (default 0.9999; 0: "
                   "equal weights).")

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
flags.DEFINE_bool("allow_config_change", False, "Resume a run although "
                  "its head/backbone options, optimizer settings or "
                  "--sampler differ; the change is recorded in "
                  "config.json.")
flags.DEFINE_bool("verbose", False, "Show tracebacks for errors.")


def config_from_flags(check_model: bool = True):
  """Turns the flags into the library's plain config objects (with
  `check_model` False, the head and backbone options are left unchecked
  and empty, for checking the data settings first)."""
  # Imported here so `--help` stays fast.
  from cfal.data.config import DataConfig  # pylint: disable=import-outside-toplevel
  from cfal.training.config import (  # pylint: disable=import-outside-toplevel
      ModelConfig, OptimizerConfig, RunConfig, TrainConfig)

  head_args, backbone_args = model_options() if check_model else ({}, {})
  slug = re.sub(r"[^A-Za-z0-9_.-]+", "_",
                FLAGS.dataset.replace("folder:", "").strip("/"))
  logdir = FLAGS.logdir or os.path.join("runs", f"{slug}-{FLAGS.head}")
  return TrainConfig(
      data=DataConfig(name=FLAGS.dataset, data_dir=FLAGS.data_dir,
                      validation_split=FLAGS.validation_split,
                      imbalance_ratio=FLAGS.imbalance_ratio,
                      image_size=FLAGS.image_size, augment=FLAGS.augment,
                      seed=FLAGS.seed,
                      max_bad_fraction=FLAGS.max_bad_fraction,
                      group_by=FLAGS.group_by,
                      test_dataset=FLAGS.test_dataset, cache=FLAGS.cache,
                      sampler=FLAGS.sampler),
      model=ModelConfig(backbone=FLAGS.backbone,
                        embedding_dim=FLAGS.embedding_dim, head=FLAGS.head,
                        head_args=head_args, backbone_args=backbone_args,
                        pretrained=FLAGS.pretrained),
      optimizer=OptimizerConfig(name=FLAGS.optimizer,
                                learning_rate=FLAGS.learning_rate,
                                weight_decay=FLAGS.weight_decay,
                                momentum=FLAGS.momentum,
                                schedule=FLAGS.schedule,
                                warmup_steps=FLAGS.warmup_steps,
                                head_learning_rate=FLAGS.head_learning_rate,
                                freeze_backbone_steps=(
                                    FLAGS.freeze_backbone_steps),
                                reweight_from_step=FLAGS.reweight_from_step,
                                reweight_from_epoch=FLAGS.reweight_from_epoch,
                                reweight_beta=(
                                    OptimizerConfig.reweight_beta
                                    if FLAGS.reweight_beta is None
                                    else FLAGS.reweight_beta)),
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
                    skip_nonfinite_steps=FLAGS.skip_nonfinite_steps,
                    allow_config_change=FLAGS.allow_config_change))


def model_options() -> tuple[dict, dict]:
  """The head and backbone options given, checked against their
  declarations (no TensorFlow needed): a bad one is a usage error."""
  from cfal.backbones.registry import check_backbone_options  # pylint: disable=import-outside-toplevel
  from cfal.heads.registry import check_head_options  # pylint: disable=import-outside-toplevel
  from cfal.options import parse_assignments  # pylint: disable=import-outside-toplevel
  given = {name: FLAGS[name].value for name in HEAD_OPTION_FLAGS
           if FLAGS[name].value is not None}
  try:
    head_args = check_head_options(FLAGS.head, given)
  except ValueError as error:
    raise_usage(str(error))
  try:
    spec = BACKBONES.get(FLAGS.backbone)
    if spec is None:
      check_backbone_options(FLAGS.backbone, {})
    backbone_args = parse_assignments(FLAGS.backbone_args, spec,
                                      kind="backbone")
  except ValueError as error:
    message = str(error)
    if not message.startswith("--backbone"):
      message = f"--backbone={FLAGS.backbone}: {message}"
    raise_usage(message)
  return head_args, backbone_args


def check_flags() -> None:
  """Usage errors that need no TensorFlow: one line, exit 2.

  Everything that can be known from the flags, the declarations and the
  run directory is checked here, before TensorFlow loads (about 10 s), so
  a usage error appears at once.
  """
  # pylint: disable=import-outside-toplevel
  from cfal.data.config import check_data_config
  try:
    check_data_config(config_from_flags(check_model=False).data)
  except ValueError as error:
    raise_usage(str(error))
  model_options()
  if FLAGS.pretrained:
    from cfal.backbones.sources import check_source  # pylint: disable=import-outside-toplevel
    check_source(FLAGS.backbone, FLAGS.pretrained)
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
  if FLAGS.head_learning_rate is not None and FLAGS.head_learning_rate <= 0:
    raise_usage(f"--head_learning_rate ({FLAGS.head_learning_rate}) must be "
                f"> 0.")
  if FLAGS.mixed_precision == "float16" and (
      FLAGS.head_learning_rate is not None or FLAGS.freeze_backbone_steps):
    raise_usage("--mixed_precision=float16 needs one loss scale for the "
                "whole model: drop --head_learning_rate and "
                "--freeze_backbone_steps, or use bfloat16.")
  for name in ("warmup_steps", "early_stopping_patience", "gpus",
               "cpu_replicas", "freeze_backbone_steps"):
    if FLAGS[name].value < 0:
      raise_usage(f"--{name} ({FLAGS[name].value}) must be >= 0.")
  if FLAGS.weight_decay < 0:
    raise_usage(f"--weight_decay ({FLAGS.weight_decay}) must be >= 0.")
  if not 0.0 <= FLAGS.momentum < 1.0:
    raise_usage(f"--momentum ({FLAGS.momentum}) must be in [0, 1).")
  if FLAGS.gpus and FLAGS.cpu_replicas:
    raise_usage(f"--gpus={FLAGS.gpus} and --cpu_replicas={FLAGS.cpu_replicas}"
                f" contradict each other: pick one.")
  check_reweighting(model_options()[0])
  if FLAGS.deterministic and FLAGS.step_mode == "xla":
    raise_usage("--deterministic cannot use --step_mode=xla: XLA has no "
                "deterministic MaxPool gradient; use --step_mode=function "
                "(or auto).")
  check_run_directory(config_from_flags())


def check_reweighting(head_args: dict) -> None:
  """The deferred re-weighting flags' usage errors that the flags alone
  show; a start after the run's end that needs the data's size (steps per
  epoch) is refused when the run is built."""
  from cfal.heads.registry import class_weighting  # pylint: disable=import-outside-toplevel
  step, epoch = FLAGS.reweight_from_step, FLAGS.reweight_from_epoch
  if step is not None and epoch is not None:
    raise_usage(f"--reweight_from_step={step} and --reweight_from_epoch="
                f"{epoch:g} both say when deferred re-weighting starts: "
                f"give one (a flagfile's can be overridden by the same "
                f"flag).")
  if step is not None and step < 0:
    raise_usage(f"--reweight_from_step ({step}) must be >= 0.")
  if epoch is not None and not epoch >= 0:
    raise_usage(f"--reweight_from_epoch ({epoch:g}) must be >= 0.")
  beta = FLAGS.reweight_beta
  if beta is not None and not 0.0 <= beta < 1.0:
    raise_usage(f"--reweight_beta ({beta:g}) must be in [0, 1).")
  if step is None and epoch is None:
    if beta is not None:
      raise_usage(f"--reweight_beta={beta:g} sets the weights of deferred "
                  f"re-weighting, which is off: add --reweight_from_epoch "
                  f"or --reweight_from_step, or drop it.")
    return
  given = (f"--reweight_from_step={step}" if step is not None
           else f"--reweight_from_epoch={epoch:g}")
  if step is not None and FLAGS.train_steps is not None and (
      step >= FLAGS.train_steps):
    raise_usage(f"{given} is not before the end of the run "
                f"(--train_steps={FLAGS.train_steps}): deferred re-weighting "
                f"would never switch on; start it earlier or train longer.")
  if epoch is not None and FLAGS.train_steps is None and (
      epoch >= FLAGS.epochs):
    raise_usage(f"{given} is not before the end of the run "
                f"(--epochs={FLAGS.epochs:g}): deferred re-weighting would "
                f"never switch on; start it earlier or train longer.")
  weighting = class_weighting(FLAGS.head, head_args)
  if weighting is not None:
    fix = ("drop --class_weights" if weighting == "--class_weights"
           else "set --class_weighting=none")
    raise_usage(f"{given}: --head={FLAGS.head} already weights its classes "
                f"({weighting}), and deferred re-weighting would weight "
                f"them twice: {fix}.")


def check_run_directory(config) -> None:
  """The run directory's own refusals, before TensorFlow loads: a live
  run holding it, or a run there with other settings. The trainer checks
  both again (and takes the lock) when it starts."""
  # pylint: disable=import-outside-toplevel
  import pathlib
  from cfal.training.run_dir import check_not_locked, check_run_dir
  logdir = pathlib.Path(config.run.logdir)
  if config.run.strategy != "multi_worker":
    # Workers of one cluster share the directory the chief locks.
    check_not_locked(logdir)
  check_run_dir(logdir, config)


def raise_usage(message: str) -> None:
  from cfal.errors import UsageError  # pylint: disable=import-outside-toplevel
  raise UsageError(message)


def main(argv) -> int:
  from cfal import cli  # pylint: disable=import-outside-toplevel
  program = cli.program_name(argv)

  def body():
    from cfal.training.runner import train  # pylint: disable=import-outside-toplevel
    config = config_from_flags()
    result = train(config)
    if result.is_chief:
      from cfal.data.config import has_test_split  # pylint: disable=import-outside-toplevel
      for line in cli.done_lines(
          argv[0], result.logdir, result.export_path,
          has_test_split=has_test_split(config.data.name,
                                        config.data.test_dataset)):
        print(line)

  return cli.run(program, argv, body, verbose=FLAGS.verbose,
                 check=check_flags)


def run() -> None:
  """The `cfal-train` console command (`python train.py` calls it too)."""
  from cfal import cli  # pylint: disable=import-outside-toplevel
  cli.start(main, FLAGS, flags.Error, __doc__)


if __name__ == "__main__":
  run()
