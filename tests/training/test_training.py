"""The training loop end to end, on real Fashion-MNIST, a few dozen steps."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import cfal.heads
from cfal.errors import UsageError
from cfal.training.runner import train
from support.training import checkpoint_weights, replace_run, small_config
from support.cluster import free_ports, tf_config

ROOT = pathlib.Path(__file__).resolve().parents[2]

HEAD_ARGS = {
    "arcface": {"scale": 16.0}, "cosface": {"scale": 16.0},
    "sphereface": {"scale": 16.0}, "combined_margin": {"scale": 16.0,
                                                       "m2": 0.2, "m3": 0.1},
    "affinity": {"sigma": 16.0}, "cfal": {"sigma": 16.0},
}


# One head per family runs by default (affinity, angular margin, manual
# update); the rest are `slow` (make test-slow). The conformance suite
# trains every head under strategies on a tiny network in the default run.
DEFAULT_HEADS = ("cfal", "arcface", "center_loss")


@pytest.mark.parametrize("head", [
    h if h in DEFAULT_HEADS else pytest.param(h, marks=pytest.mark.slow)
    for h in sorted(cfal.heads.HEADS)])
def test_every_head_trains_and_its_loss_goes_down(head, tmp_path):
  config = small_config(tmp_path, head=head, head_args=HEAD_ARGS.get(head),
                        train_steps=40, eval_every=40)
  result = train(config, echo=lambda _: None)
  losses = [h["loss"] for h in result.history]
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert losses[-1] < losses[0], losses
  assert result.validation["accuracy"] > 0.3


def test_step_modes_agree_on_the_first_steps(tmp_path):
  weights = {}
  for mode in ("eager", "function", "xla"):
    # SGD: Adam's first steps are ~lr * sign(g), so rounding noise in a
    # near-zero gradient flips whole steps; SGD keeps differences small.
    config = small_config(tmp_path / mode, head="cfal",
                          head_args={"sigma": 16.0}, train_steps=1,
                          steps_per_loop=1, step_mode=mode)
    config = dataclasses.replace(config, optimizer=dataclasses.replace(
        config.optimizer, name="sgd", learning_rate=0.01))
    train(config, echo=lambda _: None)
    weights[mode] = checkpoint_weights(tmp_path / mode)
  # XLA reorders reductions; BatchNorm's backward pass (a difference of
  # nearly equal sums over 25k values per channel) magnifies that to ~1e-3
  # relative in early conv gradients (measured), i.e. ~lr * 1e-3 in weights
  # after a step. One step, not three: on this AVX-512 machine (TF 2.21) the
  # third step's BatchNorm statistics came out up to 200% apart between XLA
  # and the other modes, with the code as it stood before the training
  # package was split, with oneDNN on or off and with a softmax head too;
  # the first step's forward and backward pass agree to the tolerance.
  # Optimizer slots are left out: they hold raw gradients.
  model = {k: v for k, v in weights["eager"].items() if "optimizer" not in k}
  for name, value in model.items():
    np.testing.assert_allclose(weights["function"][name], value, rtol=1e-5,
                               atol=1e-6, err_msg=f"function: {name}")
    np.testing.assert_allclose(weights["xla"][name], value, rtol=1e-3,
                               atol=1e-4, err_msg=f"xla: {name}")


def test_two_cpu_replicas_match_one_device(tmp_path):
  """Same global batches, synchronized BatchNorm, all-reduced center
  update: two replicas train like one device. The order of the gradient
  all-reduce still differs, and BatchNorm (one-pass variance, backward
  cancellation) magnifies it, and early training compounds it: at lr 0.01
  the loss drifted by 5e-4 relative after 6 steps (measured). The sharp
  check is the loss: with BatchNorm left unsynchronized it moved by 4.2%."""
  one = small_config(tmp_path / "one", head="center_loss", train_steps=4,
                     steps_per_loop=2)
  one = dataclasses.replace(one, optimizer=dataclasses.replace(
      one.optimizer, name="sgd", learning_rate=0.003))
  two = replace_run(one, logdir=str(tmp_path / "two"), cpu_replicas=2)
  losses_one = [h["loss"] for h in train(one, echo=lambda _: None).history]
  losses_two = [h["loss"] for h in train(two, echo=lambda _: None).history]
  np.testing.assert_allclose(losses_two, losses_one, rtol=2e-3)
  a, b = checkpoint_weights(tmp_path / "one"), checkpoint_weights(
      tmp_path / "two")
  assert a.keys() == b.keys()
  # Trainable weights only: BatchNorm running statistics average the
  # activations, and a ReLU near zero flipping on the other side of the
  # rounding moved one unit's running mean by 18% (measured).
  trainable = [k for k in a if "optimizer" not in k and "moving_" not in k]
  for name in trainable:
    scale = max(float(np.max(np.abs(a[name]))), 1e-2)
    np.testing.assert_allclose(b[name], a[name], rtol=0, atol=5e-3 * scale,
                               err_msg=name)


class _Killed(Exception):
  pass


@pytest.mark.slow   # test_reliability's SIGKILL tests cover resume, bit-exact
def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
  straight = small_config(tmp_path / "straight", train_steps=40)
  train(straight, echo=lambda _: None)

  resumed = replace_run(straight, logdir=str(tmp_path / "resumed"))

  def kill_at_step_30(line):
    if line.startswith("step 30/"):
      raise _Killed()   # after step 30 ran, before its checkpoint

  with pytest.raises(_Killed):
    train(resumed, echo=kill_at_step_30)
  lines = []
  result = train(resumed, echo=lines.append)
  assert any("Resuming" in l and "step 20" in l for l in lines), lines[:3]
  assert result.step == 40
  a = checkpoint_weights(tmp_path / "straight")
  b = checkpoint_weights(tmp_path / "resumed")
  for name in a:
    np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)


def test_event_files_hold_every_summary(tmp_path):
  train(small_config(tmp_path, head="cfal", head_args={"sigma": 16.0}),
        echo=lambda _: None)

  def tags(run):
    acc = event_accumulator.EventAccumulator(
        str(tmp_path / run), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    return set(acc.Tags()["tensors"]) | set(acc.Tags()["images"])

  train_tags, validation_tags = tags("train"), tags("validation")
  assert {"loss", "accuracy", "learning_rate",
          "examples_per_second"} <= train_tags
  assert any(t.startswith("_hparams_") for t in train_tags), train_tags
  assert {"loss", "accuracy", "balanced_accuracy", "macro_f1",
          "confusion_matrix", "embeddings",
          "per_class_recall/Trouser"} <= validation_tags
  projector = (tmp_path / "validation" / "projector_config.pbtxt").read_text()
  assert "metadata.tsv" in projector
  metadata = (tmp_path / "validation" / "metadata.tsv").read_text().split("\n")
  embeddings = np.loadtxt(tmp_path / "validation" / "embeddings.tsv")
  assert embeddings.shape == (200, 16) and len(metadata) - 2 == 200
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["head"] == "cfal"


def test_export_loads_without_cfal_and_gives_the_same_embeddings(tmp_path):
  config = small_config(tmp_path, head="arcface", head_args={"scale": 16.0},
                        train_steps=10)
  result = train(config, echo=lambda _: None)
  images = np.random.default_rng(0).random((5, 28, 28, 1), np.float32)
  np.save(tmp_path / "images.npy", images)
  script = textwrap.dedent(f"""
      import sys, numpy as np, tensorflow as tf
      model = tf.saved_model.load({str(result.export_path)!r})
      images = np.load({str(tmp_path / 'images.npy')!r})
      out = model.signatures["classify"](images=tf.constant(images))
      np.save({str(tmp_path / 'exported.npy')!r}, out["embeddings"].numpy())
      np.save({str(tmp_path / 'ids.npy')!r}, out["class_ids"].numpy())
      assert not any(m == "cfal" or m.startswith("cfal.") for m in sys.modules)
      print(out["class_names"].numpy()[:2])
      """)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  done = subprocess.run([sys.executable, "-c", script], cwd="/",
                        capture_output=True, text=True, env=env, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]

  # The same embeddings from the checkpoint, rebuilt with cfal.
  import cfal.backbones  # pylint: disable=import-outside-toplevel
  backbone = cfal.backbones.build_backbone(
      "seed_cnn", input_shape=(28, 28, 1), embedding_dim=16, normalize=True)
  head = cfal.heads.ArcFace(num_classes=10, embedding_dim=16, scale=16.0)
  tf.train.Checkpoint(backbone=backbone, head=head).read(
      tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
  ).expect_partial()
  want = backbone(images, training=False).numpy()
  np.testing.assert_allclose(np.load(tmp_path / "exported.npy"), want,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"),
                                head.predict(want).numpy())


def _train_py(*flags, timeout=600, env=None):
  return subprocess.run([sys.executable, str(ROOT / "train.py"), *flags],
                        capture_output=True, text=True, timeout=timeout,
                        env=env, cwd=str(ROOT))


def test_more_gpus_than_exist_is_a_one_line_usage_error(tmp_path):
  done = _train_py("--gpus=4", f"--logdir={tmp_path}")
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "--gpus=4" in lines[0] and "GPU" in lines[0]


def _two_workers(logdirs, train_steps):
  """Runs a 2-worker MultiWorkerMirroredStrategy run on 127.0.0.1; returns
  each worker's (exit code, RESULT dict or None, stderr)."""
  ports = free_ports(2)
  workers = [f"127.0.0.1:{p}" for p in ports]
  script = textwrap.dedent(f"""
      import json, sys
      sys.path.insert(0, {str(ROOT / 'tests')!r})
      from support.training import small_config
      from cfal import cli
      from cfal.training.runner import train
      config = small_config(sys.argv[1], head="center_loss",
                            train_steps={train_steps}, steps_per_loop=3,
                            strategy="multi_worker")
      def body():
        result = train(config, echo=lambda _: None)
        print("RESULT", json.dumps({{"chief": result.is_chief,
                                    "step": result.step,
                                    "loss": result.history[-1]["loss"]}}))
      sys.exit(cli.run("worker", ["worker"], body, verbose=False))
      """)
  procs = []
  for index, logdir in enumerate(logdirs):
    env = dict(os.environ, TF_CONFIG=tf_config(workers, index))
    procs.append(subprocess.Popen([sys.executable, "-c", script, str(logdir)],
                                  env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outcomes = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    outcomes.append((proc.returncode,
                     json.loads(lines[-1][len("RESULT "):]) if lines else None,
                     err))
  return outcomes


def test_two_workers_on_loopback_complete_and_agree(tmp_path):
  outcomes = _two_workers([tmp_path / "run"] * 2, train_steps=6)
  for code, _, err in outcomes:
    assert code == 0, err[-3000:]
  outputs = [result for _, result, _ in outcomes]
  assert [o["chief"] for o in outputs] == [True, False]
  assert all(o["step"] == 6 for o in outputs)
  assert outputs[0]["loss"] == pytest.approx(outputs[1]["loss"], rel=1e-6)
  assert (tmp_path / "run" / "export" / "saved_model.pb").exists()
  assert not list(tmp_path.glob("run/worker*"))


@pytest.mark.slow
def test_workers_that_see_different_checkpoints_refuse_to_train(tmp_path):
  # The chief's run directory has a checkpoint the other worker cannot
  # see (no shared filesystem): both must stop instead of diverging.
  train(small_config(tmp_path / "chief", head="center_loss", train_steps=6,
                     steps_per_loop=3), echo=lambda _: None)
  outcomes = _two_workers([tmp_path / "chief", tmp_path / "elsewhere"],
                          train_steps=12)
  for (code, _, err), step in zip(outcomes, (6, 0)):
    assert code == 1, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(
        f"worker: This worker restored step {step} but the workers average "
        f"3: every worker must read the chief's checkpoints"), err[-1000:]


def test_folder_dataset_with_tiff_and_a_corrupt_file(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from cfal.data.datasets import DataConfig  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  root = tmp_path / "tiles"
  for c, name in enumerate(["stroma", "tumour", "mucus"]):
    (root / name).mkdir(parents=True)
    for i in range(12):
      pixels = (rng.random((40, 40, 3)) * 80 + c * 80).astype(np.uint8)
      ext = "tif" if i % 3 == 0 else "png"
      Image.fromarray(pixels).save(root / name / f"{i}.{ext}")
  good = (root / "tumour" / "1.png").read_bytes()
  (root / "tumour" / "broken.png").write_bytes(good[:len(good) // 2])
  lines = []
  config = small_config(
      tmp_path / "run", head="cfal", head_args={"sigma": 16.0},
      data=DataConfig(name=f"folder:{root}", image_size=32,
                      validation_split=0.25, augment="flip_rotate",
                      max_bad_fraction=0.05),   # 1 of 37 is bad
      train_steps=6, steps_per_loop=3, batch_size=8)
  result = train(config, echo=lines.append)
  notes = [l for l in lines if l.startswith("note:")]
  assert len(notes) == 1 and "skipped 1 unreadable" in notes[0]
  assert "broken.png" in notes[0]
  assert result.step == 6 and np.isfinite(result.history[-1]["loss"])
  assert result.validation["num_samples"] == 9


@pytest.mark.parametrize("precision", [
    "bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
def test_mixed_precision_trains_with_float32_heads(precision, tmp_path):
  import keras  # pylint: disable=import-outside-toplevel
  before = keras.mixed_precision.global_policy().name
  config = small_config(tmp_path, head="cfal", head_args={"sigma": 16.0},
                        mixed_precision=precision)
  lines = []
  result = train(config, echo=lines.append)
  assert all(np.isfinite(h["loss"]) for h in result.history)
  flags = set(pathlib.Path("/proc/cpuinfo").read_text().split())
  emulated = precision == "bfloat16" and not flags & {
      "avx512_bf16", "amx_bf16", "bf16"}
  warned = [l for l in lines if "no native bfloat16" in l]
  assert len(warned) == emulated, lines
  assert keras.mixed_precision.global_policy().name == before   # restored
  weights = checkpoint_weights(tmp_path)
  head = [k for k in weights if k.startswith("head/prototypes")]
  assert head and weights[head[0]].dtype == np.float32


def test_early_stopping_stops_and_keeps_the_best(tmp_path):
  # A learning rate this small cannot beat the first evaluation by much;
  # patience 1 stops at the first evaluation that is not better.
  config = small_config(tmp_path, head="softmax", train_steps=200,
                        eval_every=10, early_stopping_patience=1)
  config = dataclasses.replace(config, optimizer=dataclasses.replace(
      config.optimizer, learning_rate=1e-6, schedule="constant"))
  lines = []
  result = train(config, echo=lines.append)
  assert result.stopped_early and result.step < 200
  assert any(l.startswith("Stopping early") for l in lines)
  assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints" / "best"))
  assert result.best_balanced_accuracy >= result.validation[
      "balanced_accuracy"]


@pytest.mark.parametrize("flags, fragment", [
    (["--dataset=imagenet"], "Unknown dataset"),
    (["--validation_split=0"], "--validation_split"),
    (["--imbalance_ratio=0.5"], "--imbalance_ratio"),
    (["--cpu_replicas=3"], "divisible"),
    (["--cpu_replicas=2", "--step_mode=xla"], "--step_mode=xla"),
    (["--deterministic", "--step_mode=xla"], "--deterministic"),
    (["--gpus=1", "--cpu_replicas=2"], "contradict"),
    (["--head=nope"], "Unknown --head"),
])
def test_bad_flags_are_one_line_usage_errors(flags, fragment, tmp_path):
  done = _train_py(*flags, f"--logdir={tmp_path / 'run'}", "--train_steps=2")
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2, done.stderr[-1500:]
  assert len(lines) == 1 and fragment in lines[0], lines


def test_resuming_with_other_data_flags_is_refused(tmp_path):
  config = small_config(tmp_path, train_steps=10)
  train(config, echo=lambda _: None)
  other = dataclasses.replace(config, data=dataclasses.replace(
      config.data, seed=1))
  with pytest.raises(UsageError, match="seed=0, not 1"):
    train(other, echo=lambda _: None)
  bigger = replace_run(config, batch_size=64)
  with pytest.raises(UsageError, match="--batch_size=32, not 64"):
    train(bigger, echo=lambda _: None)
