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
  _check_prototype_section(out, runs["arcface"] / "checkpoints" / "ckpt-20")


def _checkpoint_prototypes(path: pathlib.Path) -> np.ndarray:
  """The head's prototypes as the checkpoint at `path` stores them."""
  reader = tf.train.load_checkpoint(str(path))
  key = next(k for k in reader.get_variable_to_shape_map()
             if k.startswith("head/") and "prototypes" in k
             and "OPTIMIZER" not in k)
  return reader.get_tensor(key).astype(np.float64)


def _check_prototype_section(out: pathlib.Path, checkpoint: pathlib.Path):
  """report.json's `prototypes` against predictions.npz's embeddings and
  the checkpoint's [C, D] prototypes, computed here class by class."""
  saved = json.loads((out / "report.json").read_text())
  geometry = saved["prototypes"]
  npz = np.load(out / "predictions.npz")
  x = npz["embeddings"].astype(np.float64)
  prototypes = _checkpoint_prototypes(checkpoint)
  if saved["embedding_metric"] == "cosine":
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
  assert geometry["prototypes_per_class"] == 1
  assert geometry["num_samples"] == len(x)
  fractions = []
  for c, name in enumerate(saved["per_class"]):
    mine = x[npz["labels"] == c]
    mean, p = mine.mean(0), prototypes[c]
    radius = np.sqrt(np.mean(np.sum((mine - mean) ** 2, 1)))
    row = geometry["per_class"][name]
    assert row["count"] == row["points"] == len(mine)
    assert row["norm_ratio"] == pytest.approx(
        np.linalg.norm(p) / np.linalg.norm(mean), rel=1e-6)
    assert row["fraction_to_mean"] == pytest.approx(
        p @ mean / (mean @ mean), rel=1e-6, abs=1e-9)
    assert row["offset"] == pytest.approx(
        np.linalg.norm(p - mean) / radius, rel=1e-6)
    fractions.append(p @ mean / (mean @ mean))
  assert geometry["fraction_to_mean_median"] == pytest.approx(
      np.median(fractions), rel=1e-6, abs=1e-9)
  assert "Prototypes (in the " in (out / "report.md").read_text()


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
  # The SavedModel's head carries the prototypes the report measures.
  for key in ("norm_ratio_median", "fraction_to_mean_median",
              "offset_median"):
    assert from_export["prototypes"][key] == pytest.approx(
        from_checkpoint["prototypes"][key], rel=1e-4)


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
  _check_prototype_section(out, runs["cfal"] / "checkpoints" / "ckpt-20")
  scalars = _event_scalars(out)
  for key in ("norm_ratio_median", "fraction_to_mean_median",
              "offset_median"):
    assert scalars[f"prototypes/{key}"] == {
        20: pytest.approx(saved["prototypes"][key], rel=1e-6)}
  # Validation during training writes them too.
  assert "prototypes/fraction_to_mean_median" in _event_scalars(
      runs["cfal"] / "validation")


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


# ---------------------------------------------------------------------------
# Long-tailed evaluation: class_counts.json, many/medium/few-shot groups,
# post-hoc logit adjustment and the tau-normalised classifier.


@pytest.fixture(scope="module")
def long_tailed(tmp_path_factory):
  """A short softmax run on Fashion-MNIST cut to a 1000:1 long tail (5,940
  training images of the first class down to 6 of the last), evaluated on
  the validation split plainly, with post-hoc logit adjustment (tau 1) and
  with the tau-normalised classifier (tau 1)."""
  from cfal.data.datasets import DataConfig  # pylint: disable=import-outside-toplevel
  run = tmp_path_factory.mktemp("long_tailed") / "softmax"
  train(small_config(run, head="softmax", train_steps=20, data=DataConfig(
      name="fashion_mnist", validation_split=0.01, imbalance_ratio=1000)),
        echo=lambda _: None)
  reports = {}
  for name, options in (("plain", {}), ("adjusted", {"logit_adjustment": 1.0}),
                        ("tau_norm", {"tau_normalization": 1.0})):
    lines = []
    reports[name] = evaluation.evaluate_run(
        evaluation.EvalConfig(logdir=str(run), split="validation", **options),
        echo=lines.append)
    reports[name]["printed"] = lines
  return run, reports


def _validation_images(run: pathlib.Path):
  """The run's validation split as eval.py batches it."""
  from cfal.data import pipeline  # pylint: disable=import-outside-toplevel
  from cfal.training import build  # pylint: disable=import-outside-toplevel
  config = evaluation.load_run_config(run)
  data = build.load_data(config)
  return data, pipeline.eval_dataset(data.source, data.validation_indices,
                                     batch_size=256)


def test_a_run_records_its_training_class_counts(long_tailed):
  run, reports = long_tailed
  record = json.loads((run / "class_counts.json").read_text())
  data, _ = _validation_images(run)
  np.testing.assert_array_equal(
      record["class_counts"],
      np.bincount(data.source.labels[data.train_indices], minlength=10))
  assert record["class_names"] == list(data.class_names)
  assert record["imbalance_ratio"] == 1000.0
  assert record["largest_to_smallest"] == pytest.approx(
      max(record["class_counts"]) / min(record["class_counts"]))
  # The SavedModel carries the same priors.
  model = tf.saved_model.load(str(run / "export"))
  np.testing.assert_array_equal(model.class_counts.numpy(),
                                record["class_counts"])
  assert not any("class_counts.json" in l for l in reports["plain"]["printed"])


def test_long_tail_groups_in_report_markdown_and_events(long_tailed):
  run, reports = long_tailed
  out = run / "eval" / "validation" / "ckpt-20"
  saved = json.loads((out / "report.json").read_text())
  counts = json.loads((run / "class_counts.json").read_text())["class_counts"]
  long_tail = saved["long_tail"]
  assert long_tail["rule_name"] == "liu" and "n > 100" in long_tail["rule"]
  names = list(saved["per_class"])
  recalls = {n: c["recall"] for n, c in saved["per_class"].items()}
  for group, member in (("many", lambda n: n > 100),
                        ("medium", lambda n: 20 <= n <= 100),
                        ("few", lambda n: n < 20)):
    classes = [names[c] for c, n in enumerate(counts) if member(n)]
    values = long_tail["groups"][group]
    assert values["class_names"] == classes and classes
    assert values["recall"] == pytest.approx(
        np.mean([recalls[n] for n in classes]), abs=1e-12)
  md = (out / "report.md").read_text()
  assert "Long tail (Liu et al. 2019" in md
  assert md.count("-shot |") == 3
  scalars = _event_scalars(out)
  for group in ("many", "medium", "few"):
    for key in ("recall", "accuracy"):
      assert scalars[f"long_tail/{group}_{key}"] == {
          20: pytest.approx(long_tail["groups"][group][key], abs=1e-6)}
  # Validation during training writes them too.
  assert "long_tail/few_recall" in _event_scalars(run / "validation")
  printed = "\n".join(reports["plain"]["printed"])
  assert "few-shot recall" in printed


def _event_scalars(folder: pathlib.Path) -> dict[str, dict[int, float]]:
  """Scalar tag -> {step: value}, from the event files in `folder`."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  values: dict[str, dict[int, float]] = {}
  for path in folder.glob("events.out.tfevents.*"):
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={
        event_accumulator.TENSORS: 0})
    acc.Reload()
    for tag in acc.Tags()["tensors"]:
      for event in acc.Tensors(tag):
        if not event.tensor_proto.tensor_shape.dim:   # scalars only
          values.setdefault(tag, {})[event.step] = float(
              tf.make_ndarray(event.tensor_proto))
  return values


def test_logit_adjustment_equals_adjusting_the_exported_logits_by_hand(
    long_tailed):
  run, reports = long_tailed
  out = run / "eval" / "validation" / "ckpt-20+logit_adjusted_tau1"
  saved = json.loads((out / "report.json").read_text())
  assert saved["posthoc"]["logit_adjustment"]["tau"] == 1.0
  assert "post-hoc logit adjustment (tau 1)" in saved["evaluated"]
  assert "Post-hoc logit adjustment: tau 1.0" in (out / "report.md"
                                                  ).read_text()
  model = tf.saved_model.load(str(run / "export"))
  counts = model.class_counts.numpy().astype(np.float64)
  _, dataset = _validation_images(run)
  scores = np.concatenate([model.classify(images)["scores"].numpy()
                           for images, _ in dataset]).astype(np.float64)
  by_hand = scores - np.log(counts / counts.sum())
  got = np.load(out / "predictions.npz")
  np.testing.assert_array_equal(got["predictions"], by_hand.argmax(1))
  np.testing.assert_allclose(got["scores"], by_hand, rtol=1e-4, atol=1e-4)
  plain = np.load(run / "eval" / "validation" / "ckpt-20" / "predictions.npz")
  np.testing.assert_array_equal(got["embeddings"], plain["embeddings"])
  assert not np.array_equal(got["predictions"], plain["predictions"])
  # The adjustment moves predictions towards the rare classes.
  few = saved["long_tail"]["groups"]["few"]["recall"]
  assert few > reports["plain"]["long_tail"]["groups"]["few"]["recall"]
  assert "loss" not in saved   # the head's loss is not that of the scores


def test_tau_normalisation_rescales_the_checkpoints_classifier(long_tailed,
                                                               tmp_path):
  run, _ = long_tailed
  out = run / "eval" / "validation" / "ckpt-20+tau_norm_1"
  saved = json.loads((out / "report.json").read_text())
  assert saved["posthoc"]["tau_normalization"] == {
      "tau": 1.0, "bias": "dropped", "paper": "Kang et al., ICLR 2020"}
  reader = tf.train.load_checkpoint(str(run / "checkpoints" / "ckpt-20"))
  key = next(k for k in reader.get_variable_to_shape_map()
             if k.startswith("head/") and "prototypes" in k
             and "OPTIMIZER" not in k)
  W = reader.get_tensor(key).astype(np.float64)
  got = np.load(out / "predictions.npz")
  by_hand = got["embeddings"].astype(np.float64) @ (
      W / np.linalg.norm(W, axis=1, keepdims=True)).T
  np.testing.assert_array_equal(got["predictions"], by_hand.argmax(1))
  np.testing.assert_allclose(got["scores"], by_hand, rtol=1e-4, atol=1e-5)
  # The SavedModel's head gives the same tau-normalised model.
  evaluation.evaluate_run(
      evaluation.EvalConfig(logdir=str(run), split="validation",
                            saved_model=str(run / "export"),
                            tau_normalization=1.0, output_dir=str(tmp_path)),
      echo=lambda _: None)
  np.testing.assert_array_equal(
      np.load(tmp_path / "predictions.npz")["predictions"],
      got["predictions"])
  assert evaluation.output_name(run, evaluation.EvalConfig(
      logdir=str(run), saved_model=str(run / "export"),
      tau_normalization=0.5, logit_adjustment=2.0), None) == (
          "saved_model-export+tau_norm_0.5+logit_adjusted_tau2")


def test_compare_shows_the_long_tail_groups(long_tailed, tmp_path):
  run, _ = long_tailed
  folders = [run / "eval" / "validation" / n
             for n in ("ckpt-20", "ckpt-20+logit_adjusted_tau1")]
  table = documents.compare_runs(
      [f / "report.json" for f in folders]).splitlines()
  assert "many-shot recall | medium-shot recall | few-shot recall |" in (
      table[0])
  assert "ckpt-20+logit_adjusted_tau1 |" in table[3]
  few = json.loads((folders[1] / "report.json").read_text())[
      "long_tail"]["groups"]["few"]["recall"]
  assert table[3].endswith(f"| {few:.4f} |")
  # An evaluation made before the groups existed shows n/a.
  older = json.loads((folders[0] / "report.json").read_text())
  del older["long_tail"]
  (tmp_path / "report.json").write_text(json.dumps(older))
  mixed = documents.compare_runs([folders[0] / "report.json",
                                  tmp_path / "report.json"]).splitlines()
  assert mixed[3].endswith("| n/a | n/a | n/a |")


def test_a_run_without_class_counts_json_rebuilds_them(long_tailed,
                                                       tmp_path):
  run, reports = long_tailed
  kept = (run / "class_counts.json").read_text()
  (run / "class_counts.json").unlink()
  lines = []
  try:
    report = evaluation.evaluate_run(
        evaluation.EvalConfig(logdir=str(run), split="validation",
                              logit_adjustment=1.0,
                              output_dir=str(tmp_path)),
        echo=lines.append)
  finally:
    (run / "class_counts.json").write_text(kept)
  notes = [l for l in lines if "class_counts.json" in l]
  assert len(notes) == 1 and "rebuilt from its config" in notes[0]
  assert report["long_tail"] == reports["adjusted"]["long_tail"]
  np.testing.assert_array_equal(
      np.load(tmp_path / "predictions.npz")["predictions"],
      np.load(run / "eval" / "validation" / "ckpt-20+logit_adjusted_tau1" /
              "predictions.npz")["predictions"])
