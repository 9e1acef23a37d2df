"""Evaluate a trained run: metrics, embedding metrics and pictures.

    python eval.py --logdir=runs/fashion_mnist-cfal                 # test split, latest checkpoint
    python eval.py --logdir=runs/fashion_mnist-cfal --checkpoint=best --split=validation
    python eval.py --logdir=runs/fashion_mnist-cfal --saved_model=runs/fashion_mnist-cfal/export
    python eval.py --compare=runs/fashion_mnist-cfal,runs/fashion_mnist-softmax

Results go to <logdir>/eval/<split>/: report.json, report.md,
predictions.npz, confusion_matrix.png, embeddings.png, projector files and
TensorBoard image summaries. --compare prints one markdown table of runs
already evaluated.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("logdir", None, "Run directory written by train.py.")
flags.DEFINE_enum("split", "test", ["test", "validation"], "Which split.")
flags.DEFINE_string("checkpoint", "latest", "latest, best, or a checkpoint "
                    "path.")
flags.DEFINE_string("saved_model", None, "Evaluate this exported SavedModel "
                    "(the data comes from --logdir's config).")
flags.DEFINE_list("compare", None, "Run directories to tabulate side by side "
                  "(each evaluated already).")
flags.DEFINE_integer("batch_size", 256, "Global eval batch size.")
flags.DEFINE_integer("gpus", 0, "Mirror over this many GPUs.")
flags.DEFINE_integer("cpu_replicas", 0, "Mirror over N logical CPUs.")
flags.DEFINE_string("output_dir", None, "Where to write (default "
                    "<logdir>/eval/<split>).")
flags.DEFINE_bool("verbose", False, "Show tracebacks for errors.")


def check_flags() -> None:
  """Usage errors that need no TensorFlow: one line, exit 2."""
  from cfal.errors import UsageError  # pylint: disable=import-outside-toplevel
  if FLAGS.compare:
    return
  if not FLAGS.logdir:
    raise UsageError("Pass --logdir=RUN (the run directory train.py "
                     "wrote), or --compare=RUN1,RUN2.")
  if FLAGS.batch_size < 1:
    raise UsageError(f"--batch_size ({FLAGS.batch_size}) must be >= 1.")


def main(argv) -> int:
  from cfal import cli  # pylint: disable=import-outside-toplevel

  def body():
    # pylint: disable=import-outside-toplevel
    from cfal.report import documents
    from cfal.training import evaluate
    if FLAGS.compare:
      print(documents.compare_runs(FLAGS.compare, FLAGS.split))
      return
    evaluate.evaluate_run(evaluate.EvalConfig(
        logdir=FLAGS.logdir, split=FLAGS.split, checkpoint=FLAGS.checkpoint,
        saved_model=FLAGS.saved_model, batch_size=FLAGS.batch_size,
        gpus=FLAGS.gpus, cpu_replicas=FLAGS.cpu_replicas,
        output_dir=FLAGS.output_dir))

  return cli.run("eval.py", argv, body, verbose=FLAGS.verbose,
                 check=check_flags)


if __name__ == "__main__":
  from cfal import cli as _cli  # pylint: disable=ungrouped-imports
  app.run(lambda argv: sys.exit(main(argv)),
          flags_parser=_cli.flags_parser("eval.py", FLAGS, flags.Error))
