"""eval.py and cfal.training.evaluate on short real runs."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cfal.report import documents
from cfal.training import evaluate as evaluation
from cfal.errors import UsageError
from cfal.training.eval_config import find_report
from cfal.training.runner import train
from support.training import small_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two short trained runs with different heads."""
  base = tmp_path_factory.mktemp("runs")
  made = {}
  for head, args in (("arcface", {"scale": 16.0}), ("cfal", {"sigma": 16.0})):
    config = small_config(base / head, head=head, head_args=args,
                          train_steps=20)
    train(config, echo=lambda _: None)
    made[head] = base / head
  return made


def test_evaluation_writes_every_output(runs):
  lines = []
  report = evaluation.evaluate_run(
      evaluation.EvalConfig(logdir=str(runs["arcface"]), split="test"),
      echo=lines.append)
  out = runs["arcface"] / "eval" / "test" / "ckpt-20"
  saved = json.loads((out / "report.json").read_text())
  assert saved["num_samples"] == 10_000 and saved["head"] == "arcface"
  for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
              "mcc", "cohen_kappa", "per_class", "confusion_matrix",
              "embedding"):
    assert key in saved, key
  assert saved["embedding_metric"] == "cosine"
  assert saved["per_class"]["Trouser"]["support"] == 1000
  assert np.sum(saved["confusion_matrix"]) == 10_000
  assert report["accuracy"] == pytest.approx(saved["accuracy"])
  md = (out / "report.md").read_text()
  assert "| Ankle boot |" in md and "balanced acc." in md
  npz = np.load(out / "predictions.npz")
  assert npz["embeddings"].shape == (10_000, 16)
  assert npz["scores"].shape == (10_000, 10)
  np.testing.assert_array_equal(npz["scores"].argmax(1), npz["predictions"])
  assert np.mean(npz["predictions"] == npz["labels"]) == pytest.approx(
      saved["accuracy"])
  for name in ("confusion_matrix.png", "embeddings.png"):
    image = tf.io.decode_png((out / name).read_bytes())
    assert image.shape[0] > 300 and image.shape[1] > 300
  assert (out / "projector_config.pbtxt").exists()
  assert list(out.glob("events.out.tfevents.*"))
  printed = "\n".join(lines)
  assert "balanced acc." in printed and "Ankle boot" in printed


def test_pictures_in_every_format_asked_for(runs, tmp_path):
  lines = []
  evaluation.evaluate_run(
      evaluation.EvalConfig(logdir=str(runs["cfal"]), split="validation",
                            output_dir=str(tmp_path), dpi=50,
                            figure_formats=("pdf", "svg")),
      echo=lines.append)
  for name in ("confusion_matrix", "embeddings"):
    assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in (tmp_path / f"{name}.svg").read_bytes()[:2000]
    assert not (tmp_path / f"{name}.png").exists()
  assert "embeddings.pdf, embeddings.svg" in lines[-1]


def test_saved_model_gives_the_checkpoints_predictions(runs, tmp_path):
  run = runs["cfal"]
  from_checkpoint = evaluation.evaluate_run(
      evaluation.EvalConfig(logdir=str(run), split="validation",
                            output_dir=str(tmp_path / "a")),
      echo=lambda _: None)
  from_export = evaluation.evaluate_run(
      evaluation.EvalConfig(logdir=str(run), split="validation",
                            saved_model=str(run / "export"),
                            output_dir=str(tmp_path / "b")),
      echo=lambda _: None)
  a = np.load(tmp_path / "a" / "predictions.npz")
  b = np.load(tmp_path / "b" / "predictions.npz")
  np.testing.assert_array_equal(a["predictions"], b["predictions"])
  np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=1e-5,
                             atol=1e-6)
  assert from_export["embedding_metric"] == "euclidean"
  assert from_checkpoint["accuracy"] == from_export["accuracy"]


def test_compare_tabulates_runs(runs):
  for run in runs.values():
    evaluation.evaluate_run(
        evaluation.EvalConfig(logdir=str(run), split="validation"),
        echo=lambda _: None)
  table = documents.compare_runs(
      [find_report(r, "validation") for r in runs.values()]).splitlines()
  assert len(table) == 4 and "balanced acc." in table[0]
  assert "| arcface |" in table[2] and "| cfal |" in table[3]
  assert "eval/validation/ckpt-20 |" in table[2]


def test_checkpoints_and_the_saved_model_are_evaluated_into_their_own_runs(
    runs):
  # --saved_model used to replace the checkpoint's eval/test/ silently.
  run = runs["arcface"]
  earlier = sorted((run / "checkpoints").glob("ckpt-*.index"))[0]
  configs = {
      "ckpt-20": evaluation.EvalConfig(logdir=str(run), split="validation"),
      earlier.stem: evaluation.EvalConfig(
          logdir=str(run), split="validation",
          checkpoint=str(earlier.with_suffix(""))),
      "saved_model-export": evaluation.EvalConfig(
          logdir=str(run), split="validation",
          saved_model=str(run / "export")),
  }
  assert earlier.stem != "ckpt-20"
  for config in configs.values():
    evaluation.evaluate_run(config, echo=lambda _: None)
  written = {p.parent.name: json.loads(p.read_text())
             for p in (run / "eval" / "validation").glob("*/report.json")}
  assert set(configs) <= set(written)
  assert "SavedModel" in written["saved_model-export"]["evaluated"]
  assert earlier.stem in written[earlier.stem]["evaluated"]
  for name in configs:
    out = run / "eval" / "validation" / name
    assert list(out.glob("events.out.tfevents.*")), name
    assert (out / "projector_config.pbtxt").exists(), name
  # A run's directory means its newest evaluation to --compare.
  assert find_report(run, "validation").parent.name == "saved_model-export"
  # A checkpoint from another run keeps where it came from.
  other = runs["cfal"] / "checkpoints" / "ckpt-20"
  assert evaluation.output_name(
      run, evaluation.EvalConfig(logdir=str(run)), str(other)) == (
          f"external-{runs['cfal'].name}-checkpoints-ckpt-20")


def _one_line_usage_error(fn) -> str:
  with pytest.raises(UsageError) as error:
    fn()
  message = str(error.value)
  assert "\n" not in message
  return message


def test_bad_run_directories_are_one_line_errors(runs, tmp_path):
  evaluate = lambda logdir, **kw: evaluation.evaluate_run(  # noqa: E731
      evaluation.EvalConfig(logdir=str(logdir), **kw), echo=lambda _: None)
  assert "does not exist" in _one_line_usage_error(
      lambda: evaluate(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  assert "empty" in _one_line_usage_error(lambda: evaluate(tmp_path / "empty"))
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  shutil.copy(runs["arcface"] / "config.json", no_ckpt / "config.json")
  assert "no latest checkpoint" in _one_line_usage_error(
      lambda: evaluate(no_ckpt))
  other = tf.train.latest_checkpoint(str(runs["cfal"] / "checkpoints"))
  message = _one_line_usage_error(
      lambda: evaluate(runs["arcface"], checkpoint=other))
  assert "head=cfal" in message and "head=arcface" in message


def test_eval_py_missing_run_exits_2_with_one_line(tmp_path):
  done = subprocess.run(
      [sys.executable, str(ROOT / "eval.py"), f"--logdir={tmp_path}/nope"],
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "does not exist" in lines[0], done.stderr


def _event_steps(folder: pathlib.Path) -> dict[str, set[int]]:
  """Tag -> steps written, from the event files in `folder`."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  steps: dict[str, set[int]] = {}
  for path in folder.glob("events.out.tfevents.*"):
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={
        event_accumulator.TENSORS: 0, event_accumulator.IMAGES: 0})
    acc.Reload()
    for tag in acc.Tags()["tensors"]:
      steps.setdefault(tag, set()).update(e.step for e in acc.Tensors(tag))
  return steps


def test_eval_summaries_are_written_at_the_checkpoints_step(runs):
  # They were written at step 0: a trained model's confusion matrix sat
  # where an untrained one's belongs, and there were no scalars.
  out = runs["cfal"] / "eval" / "validation" / "ckpt-20"
  evaluation.evaluate_run(
      evaluation.EvalConfig(logdir=str(runs["cfal"]), split="validation"),
      echo=lambda _: None)
  steps = _event_steps(out)
  for tag in ("confusion_matrix", "embeddings", "accuracy",
              "balanced_accuracy", "macro_f1", "loss"):
    assert steps.get(tag) == {20}, (tag, steps.get(tag))
  saved = json.loads((out / "report.json").read_text())
  assert saved["step"] == 20


def test_folder_runs_refuse_the_test_split_before_reading_the_folder(
    tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from cfal.data.datasets import DataConfig  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  root = tmp_path / "tiles"
  for c, name in enumerate(["stroma", "tumour"]):
    (root / name).mkdir(parents=True)
    for i in range(10):
      Image.fromarray((rng.random((20, 20)) * 100 + 80 * c).astype(
          np.uint8)).save(root / name / f"{i}.png")
  config = small_config(tmp_path / "run", data=DataConfig(
      name=f"folder:{root}", image_size=20, validation_split=0.2),
      train_steps=2, steps_per_loop=1, batch_size=4)
  train(config, echo=lambda _: None)
  shutil.rmtree(root)   # nothing may be read: the answer needs no data
  message = _one_line_usage_error(lambda: evaluation.evaluate_run(
      evaluation.EvalConfig(logdir=str(tmp_path / "run"), split="test"),
      echo=lambda _: None))
  assert message == (f"folder:{root} has no test split (train with "
                     f"--test_dataset=folder:... or csv:... for an external "
                     f"one); use --split=validation.")


def test_long_retrieval_metrics_report_their_progress():
  from cfal.metrics.embedding import retrieval_metrics  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(600, 4)), rng.integers(0, 3, 600)
  lines = []
  retrieval_metrics(x, y, metric="euclidean", chunk_size=100,
                    progress=evaluation._progress_line(lines.append,
                                                       every=0.0))
  assert [l.split(" queries")[0] for l in lines] == [
      f"retrieval metrics: {n}/600" for n in range(100, 600, 100)]
  quiet = []
  retrieval_metrics(x, y, metric="euclidean", chunk_size=100,
                    progress=evaluation._progress_line(quiet.append))
  assert not quiet   # short runs say nothing
