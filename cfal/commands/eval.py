"""cfal-eval: evaluate a trained run (metrics, embedding metrics, pictures).

    cfal-eval --logdir=runs/fashion_mnist-cfal                 # test split, latest checkpoint
    cfal-eval --logdir=runs/fashion_mnist-cfal --checkpoint=best --split=validation
    cfal-eval --logdir=runs/fashion_mnist-cfal --saved_model=runs/fashion_mnist-cfal/export
    cfal-eval --logdir=runs/fashion_mnist_lt-softmax --logit_adjustment=1
    cfal-eval --logdir=runs/fashion_mnist_lt-softmax --tau_normalization=1
    cfal-eval --compare=runs/fashion_mnist-cfal,runs/fashion_mnist-softmax

In a clone of the repository `python eval.py ...` is the same program.
Results go to <logdir>/eval/<split>/<weights>/, the last folder naming the
weights evaluated (ckpt-842, best-ckpt-700, saved_model-export), so no
evaluation overwrites another: report.json, report.md, predictions.npz,
confusion_matrix and embeddings pictures (--figure_format=png,pdf,svg,
--dpi), projector files and TensorBoard
summaries. --compare prints one markdown table of runs already evaluated.

The report groups the classes into many-shot (> 100 training images),
medium-shot (20-100) and few-shot (< 20), Liu et al. 2019, or into thirds
by training count when those leave a group empty; the counts are the ones
the run recorded in <logdir>/class_counts.json. Two post-hoc corrections
for long-tailed data change the scores and predictions (not the
embeddings) and go to a folder of their own (ckpt-842+logit_adjusted_tau1,
ckpt-842+tau_norm_1): --logit_adjustment=TAU predicts argmax f(x) - TAU
log(prior) (Menon et al. 2021; heads whose scores are logits), and
--tau_normalization=TAU the classifier w_j / ||w_j||^TAU without bias
(Kang et al. 2020; linear-classifier heads: softmax, focal,
logit_adjusted, balanced_softmax, center_loss).
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("logdir", None, "Run directory written by cfal-train "
                    "(train.py).")
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
                    "<logdir>/eval/<split>/<weights>).")
flags.DEFINE_string("figure_format", "png", "Picture formats, comma-separated: "
                    "png, pdf, svg (vector text and axes, rasterised "
                    "points), e.g. png,pdf.")
flags.DEFINE_integer("dpi", 100, "Resolution of the PNG pictures (and of the "
                     "points in PDF/SVG, at least 200 there).")
flags.DEFINE_float("logit_adjustment", None, "Post-hoc logit adjustment "
                   "(Menon et al. 2021): predict argmax_j f_j(x) - TAU "
                   "log(pi_j), pi the training class priors; TAU >= 0. "
                   "Heads whose scores are logits.")
flags.DEFINE_float("tau_normalization", None, "tau-normalised classifier "
                   "(Kang et al. 2020): weight rows w_j / ||w_j||^TAU, "
                   "bias dropped; TAU >= 0. Linear-classifier heads.")
flags.DEFINE_bool("verbose", False, "Show tracebacks for errors.")


def eval_config():
  """The flags as the library's `EvalConfig`."""
  # pylint: disable=import-outside-toplevel
  from cfal.training.eval_config import EvalConfig
  from cfal.viz.formats import figure_formats
  return EvalConfig(
      logdir=FLAGS.logdir, split=FLAGS.split, checkpoint=FLAGS.checkpoint,
      saved_model=FLAGS.saved_model, batch_size=FLAGS.batch_size,
      gpus=FLAGS.gpus, cpu_replicas=FLAGS.cpu_replicas,
      output_dir=FLAGS.output_dir,
      figure_formats=figure_formats(FLAGS.figure_format), dpi=FLAGS.dpi,
      logit_adjustment=FLAGS.logit_adjustment,
      tau_normalization=FLAGS.tau_normalization)


def compared_reports() -> list:
  """The report.json of each --compare entry (a run's newest evaluation of
  --split, or an evaluation folder)."""
  from cfal.training.eval_config import find_report  # pylint: disable=import-outside-toplevel
  return [find_report(path, FLAGS.split) for path in FLAGS.compare]


def check_flags() -> None:
  """Usage errors that need no TensorFlow: one line, exit 2.

  The run directory, the split, the checkpoint or SavedModel are checked
  here, before TensorFlow loads, so a mistake shows at once.
  """
  # pylint: disable=import-outside-toplevel
  from cfal.errors import UsageError
  from cfal.training.eval_config import check_eval_config
  from cfal.viz.formats import figure_formats
  if FLAGS.compare:
    compared_reports()   # a run not evaluated yet is a usage error
    return
  if not FLAGS.logdir:
    raise UsageError("Pass --logdir=RUN (the run directory cfal-train "
                     "wrote), or --compare=RUN1,RUN2.")
  for name in ("batch_size",):
    if FLAGS[name].value < 1:
      raise UsageError(f"--{name} ({FLAGS[name].value}) must be >= 1.")
  if not 10 <= FLAGS.dpi <= 1200:
    raise UsageError(f"--dpi ({FLAGS.dpi}) must be in [10, 1200].")
  try:
    figure_formats(FLAGS.figure_format)
  except ValueError as error:
    raise UsageError(f"--figure_format={FLAGS.figure_format}: {error}"
                     ) from None
  for name in ("gpus", "cpu_replicas"):
    if FLAGS[name].value < 0:
      raise UsageError(f"--{name} ({FLAGS[name].value}) must be >= 0.")
  check_eval_config(eval_config())


def main(argv) -> int:
  from cfal import cli  # pylint: disable=import-outside-toplevel

  def body():
    # pylint: disable=import-outside-toplevel
    from cfal.report import documents
    from cfal.training import evaluate
    if FLAGS.compare:
      print(documents.compare_runs(compared_reports()))
      return
    evaluate.evaluate_run(eval_config())

  return cli.run(cli.program_name(argv), argv, body, verbose=FLAGS.verbose,
                 check=check_flags)


def run() -> None:
  """The `cfal-eval` console command (`python eval.py` calls it too)."""
  from cfal import cli  # pylint: disable=import-outside-toplevel
  cli.start(main, FLAGS, flags.Error, __doc__)


if __name__ == "__main__":
  run()
