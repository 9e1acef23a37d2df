"""Usage errors as a user meets them: one line, exit 2, before TensorFlow.

Every case runs the real program in a fresh process. Each must print
exactly one line on stderr and exit 2 without TensorFlow ever being
imported (so the answer comes in well under a second, not after the ~10 s
TensorFlow takes to load); the wall time is checked against the issue's
3 s as well.
"""

from __future__ import annotations

import fcntl
import json
import re
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Runs a program as `python <script>` does, and says on exit whether
# TensorFlow was imported.
_PROBE = textwrap.dedent("""
    import atexit, runpy, sys
    atexit.register(lambda: print("tensorflow imported:",
                                  "tensorflow" in sys.modules))
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
""")


def _run(script: str, *args: str, cwd=ROOT) -> tuple[int, list[str], float]:
  started = time.monotonic()
  done = subprocess.run(
      [sys.executable, "-c", _PROBE, str(ROOT / script), *args],
      capture_output=True, text=True, cwd=cwd, timeout=120)
  elapsed = time.monotonic() - started
  assert "tensorflow imported: False" in done.stdout, (done.stdout,
                                                       done.stderr)
  return done.returncode, done.stderr.splitlines(), elapsed


@pytest.mark.parametrize("script, args, expected", [
    ("train.py", ["--nope"], "train.py: Unknown command line flag 'nope' "
     "(see --help)"),
    ("train.py", ["--flagfile=flags/missing.flags"], "train.py: Unable to "
     "open flagfile: [Errno 2] No such file or directory: "
     "'flags/missing.flags' (see --help)"),
    ("train.py", ["--step_mode=fast"], "train.py: flag --step_mode=fast: "
     "value should be one of <auto|eager|function|xla> (see --help)"),
    ("train.py", ["--head=arcface", "--margin=4"], "train.py: "
     "--head=arcface: ArcFace `margin` (4) is an angle in radians and must "
     "be in [0, pi); 0.5 is the paper's value."),
    ("train.py", ["--head=softmax", "--sigma=2"], "train.py: --head=softmax "
     "takes no sigma; it takes use_bias, class_weighting, class_weights, "
     "beta, gamma, spread_weight."),
    ("train.py", ["--head=cfal", "--sigma=-1"], None),
    ("train.py", ["--head=subcenter_arcface", "--num_subcenters=0"],
     "train.py: --head=subcenter_arcface: `num_subcenters` (0) must be in "
     "[1, inf]."),
    ("train.py", ["--head=arcface", "--num_subcenters=3"], "train.py: "
     "--head=arcface takes no num_subcenters; it takes scale, margin, "
     "margin_counts_power, margin_floor_ratio, class_weighting, "
     "class_weights, beta, gamma, spread_weight."),
    ("train.py", ["--dataset=imagenet"], "train.py: Unknown dataset "
     "'imagenet'; choose one of fashion_mnist, mnist, folder:<path>, "
     "csv:<path>."),
    ("train.py", ["--backbone=resnet", "--backbone_args=width=0"], None),
    ("train.py", ["--group_by=slide(?P<group>\\d+)"], "train.py: --group_by "
     "is for folder: and csv: datasets, not fashion_mnist."),
    ("train.py", ["--dataset=folder:/tiles", "--group_by=slide(\\d+)"], None),
    ("train.py", ["--test_dataset=folder:/tiles"], None),
    ("train.py", ["--sampler=bogus"], "train.py: Unknown --sampler='bogus'; "
     "choose one of instance, class_balanced, square_root, progressive."),
    ("train.py", ["--batch_size=0"], "train.py: --batch_size (0) must be "
     ">= 1."),
    ("train.py", ["--gpus=2", "--cpu_replicas=2"], None),
    ("train.py", ["stray"], "train.py: unexpected arguments stray; flags are "
     "--name=value."),
    ("train.py", ["--head=ldam", "--reweight_from_epoch=1",
                  "--reweight_from_step=100"], "train.py: "
     "--reweight_from_step=100 and --reweight_from_epoch=1 both say when "
     "deferred re-weighting starts: give one (a flagfile's can be "
     "overridden by the same flag)."),
    ("train.py", ["--head=focal", "--reweight_from_epoch=1"], "train.py: "
     "--reweight_from_epoch=1: --head=focal already weights its classes "
     "(--class_weighting=auto, its default), and deferred re-weighting "
     "would weight them twice: set --class_weighting=none."),
    ("train.py", ["--head=ldam", "--train_steps=50",
                  "--reweight_from_step=50"], "train.py: "
     "--reweight_from_step=50 is not before the end of the run "
     "(--train_steps=50): deferred re-weighting would never switch on; "
     "start it earlier or train longer."),
    ("eval.py", ["--split=tset"], "eval.py: flag --split=tset: value should "
     "be one of <test|validation> (see --help)"),
    ("eval.py", [], "eval.py: Pass --logdir=RUN (the run directory "
     "cfal-train wrote), or --compare=RUN1,RUN2."),
    ("eval.py", ["--logdir=/nonexistent/run"], "eval.py: Run directory "
     "/nonexistent/run does not exist; pass the --logdir that training "
     "wrote."),
    ("eval.py", ["--logdir=x", "--figure_format=png,jpg"], "eval.py: "
     "--figure_format=png,jpg: Unknown figure format 'jpg'; valid formats "
     "are png, pdf, svg."),
    ("eval.py", ["--logdir=x", "--dpi=5"], "eval.py: --dpi (5) must be in "
     "[10, 1200]."),
    ("eval.py", ["--compare=/nonexistent/a,/nonexistent/b"], "eval.py: "
     "/nonexistent/a has no evaluation of the test split: evaluate it first "
     "(--logdir=/nonexistent/a --split=test)."),
    ("eval.py", ["--logdir=x", "--logit_adjustment=-0.5"], "eval.py: "
     "--logit_adjustment=-0.5: tau must be a finite number >= 0."),
    ("eval.py", ["--logdir=x", "--tau_normalization=-1"], "eval.py: "
     "--tau_normalization=-1: tau must be a finite number >= 0."),
], ids=["unknown_flag", "missing_flagfile", "bad_enum", "head_value",
        "head_option", "cfal_sigma", "num_subcenters",
        "num_subcenters_elsewhere", "dataset", "backbone_arg",
        "group_by_digits", "group_by_unnamed", "test_dataset_digits",
        "sampler", "batch_size", "gpus_and_cpus", "positional",
        "drw_step_and_epoch", "drw_on_class_weights", "drw_after_the_end",
        "eval_bad_enum", "eval_no_logdir",
        "eval_missing_run", "eval_figure_format", "eval_dpi",
        "eval_compare", "eval_negative_logit_adjustment",
        "eval_negative_tau_normalization"])
def test_usage_errors_are_one_line_exit_2_before_tensorflow(script, args,
                                                            expected):
  code, lines, elapsed = _run(script, *args)
  assert code == 2 and len(lines) == 1, lines
  assert lines[0].startswith(f"{script}: ")
  if expected is not None:
    assert lines == [expected]
  assert elapsed < 3.0, elapsed


def _finished_run(logdir: pathlib.Path) -> None:
  """A run directory as training leaves it: config.json and a checkpoint
  state naming ckpt-20 (written by the real TrainConfig, no TensorFlow)."""
  from cfal.data.config import DataConfig  # pylint: disable=import-outside-toplevel
  from cfal.training.config import (  # pylint: disable=import-outside-toplevel
      ModelConfig, RunConfig, TrainConfig)
  config = TrainConfig(data=DataConfig(), model=ModelConfig(),
                       run=RunConfig(logdir=str(logdir)))
  (logdir / "checkpoints").mkdir(parents=True)
  (logdir / "config.json").write_text(config.to_json())
  (logdir / "checkpoints" / "checkpoint").write_text(
      'model_checkpoint_path: "ckpt-20"\n'
      'all_model_checkpoint_paths: "ckpt-20"\n')
  (logdir / "checkpoints" / "ckpt-20.index").write_bytes(b"")


def test_run_directory_errors_come_before_tensorflow(tmp_path):
  run = tmp_path / "run"
  _finished_run(run)
  saved = json.loads((run / "config.json").read_text())
  assert saved["model"]["head"] == "cfal"

  code, lines, _ = _run("train.py", f"--logdir={run}", "--head=arcface")
  assert code == 2 and lines == [
      f"train.py: {run} holds a run with head=cfal, not arcface: use a new "
      f"--logdir or the same head."]

  code, lines, _ = _run("train.py", f"--logdir={run}", "--learning_rate=0.5")
  assert code == 2 and len(lines) == 1
  assert "optimizer.learning_rate 0.001 -> 0.5" in lines[0]

  code, lines, _ = _run("train.py", f"--logdir={run}",
                        "--sampler=square_root")
  assert code == 2 and len(lines) == 1
  assert "data.sampler instance -> square_root" in lines[0]

  # A live run holds the directory.
  with open(run / ".lock", "a+", encoding="utf-8") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("cfal run pid 1 on here (since then)\n")
    held.flush()
    code, lines, _ = _run("train.py", f"--logdir={run}")
  assert code == 2 and lines == [
      f"train.py: {run} is in use by cfal run pid 1 on here (since then): "
      f"wait for that run to finish or stop it, or use another --logdir."]

  # A config.json cut off half-way (written by hand, or another tool).
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text('{"model": {"head": "cf')
  code, lines, _ = _run("train.py", f"--logdir={broken}")
  assert code == 2 and len(lines) == 1, lines
  assert lines[0].startswith(f"train.py: {broken}/config.json is not a "
                             f"readable cfal config (")

  code, lines, _ = _run("eval.py", f"--logdir={run}", "--checkpoint=bestt")
  assert code == 2 and lines == [
      "eval.py: --checkpoint=bestt: no such checkpoint (expected "
      "bestt.index); use latest, best or a checkpoint path."]
  code, lines, _ = _run("eval.py", f"--logdir={run}", "--checkpoint=best")
  assert code == 2 and lines == [
      f"eval.py: {run} has no best checkpoint in {run}/checkpoints/best; "
      f"train first (or pass --checkpoint=PATH)."]
  # Post-hoc corrections a cfal head cannot take (its scores are
  # affinities), known from config.json's head name.
  code, lines, _ = _run("eval.py", f"--logdir={run}", "--tau_normalization=1")
  assert code == 2 and lines == [
      "eval.py: --tau_normalization is for heads with a linear classifier "
      "(balanced_softmax, center_loss, focal, logit_adjusted, softmax); "
      "this run's head is cfal (its scores are Gaussian affinities, not "
      "logits)."]
  code, lines, _ = _run("eval.py", f"--logdir={run}", "--logit_adjustment=1")
  assert code == 2 and len(lines) == 1
  assert lines[0].startswith("eval.py: --logit_adjustment is for heads with "
                             "scores that are logits (")
  code, lines, _ = _run("eval.py", f"--logdir={run}",
                        f"--saved_model={tmp_path}/export")
  assert code == 2 and lines == [
      f"eval.py: --saved_model={tmp_path}/export is not a SavedModel (no "
      f"saved_model.pb); training exports one to <logdir>/export."]


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
@pytest.mark.parametrize("spelling", ["--help", "-help", "--helpfull"])
def test_help_exits_0_and_names_only_recipes_that_exist(script, spelling):
  # absl exits 1 after --help; and train.py's help named a recipe file
  # (flags/cfal_fashion_mnist_lt.flags) that did not exist.
  done = subprocess.run([sys.executable, str(ROOT / script), spelling],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert done.returncode == 0, done.stderr
  assert "--logdir" in done.stdout
  named = re.findall(r"flags/[\w./-]+\.flags", done.stdout)
  if script == "train.py":
    assert named
  for recipe in named:
    assert (ROOT / recipe).is_file(), recipe
