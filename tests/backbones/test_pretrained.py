"""Pretrained weights: ImageNet through Keras's cache, weights files, runs.

Nothing here reaches the internet: the ImageNet tests point the weights'
URL at a closed or silent port on 127.0.0.1, and every test has its own
KERAS_HOME. MobileNetV3-Large at 32 px is the network (the cheapest
application to build).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

from cfal.backbones import (application_body, build_backbone,
                            load_pretrained, pretrained, sources)
from cfal.backbones.applications import APPLICATIONS
from cfal.data.errors import DataError
from cfal.errors import UsageError
from support.strategies import mirrored_strategy

NAME, SHAPE, DIM = "mobilenetv3_large", (32, 32, 3), 8


def _build(seed: int = 0, name: str = NAME, dim: int = DIM, **options):
  return build_backbone(name, input_shape=SHAPE if name == NAME else (
      28, 28, 1), embedding_dim=dim, seed=seed, **options)


def _values(variables) -> list[np.ndarray]:
  return [v.numpy() for v in variables]


def _assert_equal(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def _one_line(error: BaseException) -> str:
  message = str(error)
  assert message and "\n" not in message
  return message


@pytest.fixture(autouse=True)
def _keras_home(tmp_path, monkeypatch):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
  return tmp_path / "keras_home"


@pytest.fixture(scope="module")
def model():
  return _build(seed=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Keras's own MobileNetV3Large (plain BatchNorm), random weights, and
  its weights written as Keras Applications' published files are: the
  legacy HDF5 layout, layer by layer."""
  application = keras.applications.MobileNetV3Large(
      include_top=False, weights=None, input_shape=SHAPE)
  rng = np.random.default_rng(0)
  for variable in application.weights:
    value = rng.normal(size=variable.shape).astype("float32")
    if "variance" in variable.path:
      value = np.abs(value) + 0.5
    variable.assign(value)
  path = tmp_path_factory.mktemp("reference") / "reference_notop.h5"
  with h5py.File(path, "w") as handle:
    legacy_h5_format.save_weights_to_hdf5_group(handle, application)
  return application, path


def _closed_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _local_imagenet(monkeypatch, file_hash: str | None = None
                    ) -> sources.WeightsFile:
  """NAME's ImageNet file, served from a closed local port."""
  real = sources.IMAGENET_WEIGHTS[NAME]
  local = sources.WeightsFile(
      real.name, f"http://127.0.0.1:{_closed_port()}/{real.name}",
      file_hash or real.file_hash)
  monkeypatch.setitem(sources.IMAGENET_WEIGHTS, NAME, local)
  return local


# ---------------------------------------------------------------------------
# ImageNet: Keras's cache, and one line when the file cannot be fetched.


def test_unreachable_imagenet_is_one_line_naming_file_and_folder(
    model, monkeypatch, _keras_home):
  weights = _local_imagenet(monkeypatch)
  before = _values(model.variables)
  start = time.monotonic()
  with pytest.raises(DataError) as info:
    load_pretrained(model, "imagenet")
  assert time.monotonic() - start < 5
  message = _one_line(info.value)
  assert weights.name in message and weights.origin in message
  assert f"{_keras_home / 'models'}/" in message
  assert message.startswith(f"Could not download {weights.name} from ")
  _assert_equal(_values(model.variables), before)
  assert not (_keras_home / "models" / weights.name).exists()


def test_a_silent_server_times_out_instead_of_hanging():
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # the handshake completes; nothing ever answers
    port = server.getsockname()[1]
    weights = sources.WeightsFile("x_notop.h5",
                                  f"http://127.0.0.1:{port}/x_notop.h5",
                                  "0" * 32)
    start = time.monotonic()
    with pytest.raises(DataError, match="timed out") as info:
      pretrained.download_weights(weights, timeout=0.5)
    assert time.monotonic() - start < 5
  _one_line(info.value)
  assert socket.getdefaulttimeout() is None


def test_the_imagenet_file_in_keras_cache_loads_without_network(
    model, reference, monkeypatch, _keras_home):
  application, path = reference
  data = path.read_bytes()
  weights = _local_imagenet(monkeypatch, hashlib.md5(data).hexdigest())
  (_keras_home / "models").mkdir(parents=True)
  (_keras_home / "models" / weights.name).write_bytes(data)
  embedding = _values(model.get_layer("embedding").weights)
  said = load_pretrained(model, "imagenet")
  assert "ImageNet weights from" in said and weights.name in said
  _assert_equal(_values(application_body(model).weights),
                _values(application.weights))
  _assert_equal(_values(model.get_layer("embedding").weights), embedding)


def test_a_cached_file_with_another_digest_is_named_and_kept(
    model, monkeypatch, _keras_home):
  weights = _local_imagenet(monkeypatch)
  cached = _keras_home / "models" / weights.name
  cached.parent.mkdir(parents=True)
  cached.write_bytes(b"half a download")
  with pytest.raises(DataError) as info:
    load_pretrained(model, "imagenet")
  assert str(cached) in _one_line(info.value)
  assert cached.read_bytes() == b"half a download"


def test_imagenet_only_for_keras_applications():
  with pytest.raises(UsageError, match="has no ImageNet weights") as info:
    load_pretrained(_build(name="seed_cnn"), "imagenet")
  _one_line(info.value)


@pytest.mark.parametrize("name", [
    "mobilenetv3_large",
    *(pytest.param(n, marks=pytest.mark.slow) for n in (
        "resnet50", "densenet121", "efficientnetv2_b0", "efficientnetv2_s",
        "convnext_tiny"))])
@pytest.mark.filterwarnings("ignore:`input_shape` is undefined")
def test_the_imagenet_files_are_the_ones_keras_fetches(name, monkeypatch):
  """`keras.applications.X(weights="imagenet", include_top=False)` asks
  `get_file` for exactly the file, URL and digest cfal uses."""
  asked = {}

  class Asked(Exception):
    pass

  def record(fname, origin, **kwargs):
    asked.update(fname=fname, origin=origin, **kwargs)
    raise Asked

  monkeypatch.setattr(file_utils, "get_file", record)
  constructor = getattr(keras.applications, APPLICATIONS[name].constructor)
  with pytest.raises(Asked):
    constructor(include_top=False, weights="imagenet", input_shape=(32, 32, 3))
  ours = sources.IMAGENET_WEIGHTS[name]
  assert (asked["fname"], asked["origin"], asked["file_hash"]) == (
      ours.name, ours.origin, ours.file_hash)
  assert asked["cache_subdir"] == "models"


# ---------------------------------------------------------------------------
# Weights files.


@pytest.mark.parametrize("freeze_batchnorm", [False, True])
def test_a_keras_applications_h5_file_loads_bit_identically(
    reference, freeze_batchnorm):
  application, path = reference
  model = _build(seed=3, freeze_batchnorm=freeze_batchnorm)
  embedding = _values(model.get_layer("embedding").weights)
  said = load_pretrained(model, path)
  assert str(path) in said
  body = application_body(model)
  _assert_equal(_values(body.weights), _values(application.weights))
  _assert_equal(_values(model.get_layer("embedding").weights), embedding)
  images = np.random.default_rng(1).random((2, *SHAPE), dtype=np.float32)
  np.testing.assert_array_equal(body([images * 255], training=False),
                                application(images * 255, training=False))


def test_a_weights_h5_file_of_the_backbone_loads_bit_identically(tmp_path):
  # Frozen BatchNorm changes no variable: the files fit either way.
  source, target = _build(seed=1), _build(seed=2, freeze_batchnorm=True)
  source.save_weights(tmp_path / "backbone.weights.h5")
  assert "whole backbone" in load_pretrained(target,
                                             tmp_path / "backbone.weights.h5")
  _assert_equal(_values(target.variables), _values(source.variables))


def test_a_weights_h5_file_of_the_application_loads_into_it(
    reference, tmp_path):
  application, _ = reference
  application.save_weights(tmp_path / "application.weights.h5")
  model = _build(seed=4)
  embedding = _values(model.get_layer("embedding").weights)
  said = load_pretrained(model, tmp_path / "application.weights.h5")
  assert "Keras application" in said
  _assert_equal(_values(application_body(model).weights),
                _values(application.weights))
  _assert_equal(_values(model.get_layer("embedding").weights), embedding)


def test_files_of_other_networks_are_one_line_and_change_nothing(
    model, reference, tmp_path):
  other = _build(name="seed_cnn")
  other.save_weights(tmp_path / "seed_cnn.weights.h5")
  tiny = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  with h5py.File(tmp_path / "tiny.h5", "w") as handle:
    legacy_h5_format.save_weights_to_hdf5_group(handle, tiny)
  before = _values(model.variables)
  for path in ("seed_cnn.weights.h5", "tiny.h5"):
    with pytest.raises(UsageError) as info:
      load_pretrained(model, tmp_path / path)
    assert str(tmp_path / path) in _one_line(info.value)
    _assert_equal(_values(model.variables), before)
  with pytest.raises(UsageError, match="not a Keras application"):
    load_pretrained(other, reference[1])
  (tmp_path / "broken.h5").write_bytes(b"not hdf5")
  with pytest.raises(DataError) as info:
    load_pretrained(model, tmp_path / "broken.h5")
  _one_line(info.value)


@pytest.mark.parametrize("source, words", [
    ("missing.h5", "does not exist"), ("empty_folder", "without cfal "
                                       "checkpoints"),
    ("weights.npz", "not a weights file")])
def test_bad_sources_are_one_line_usage_errors(tmp_path, source, words):
  (tmp_path / "empty_folder").mkdir()
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(UsageError, match=words) as info:
    sources.check_source(NAME, tmp_path / source)
  _one_line(info.value)


# ---------------------------------------------------------------------------
# Transfer from another cfal run.


def _write_run(run, backbone, *, identity=None, backbone_args=None,
               folders=("best", "")) -> dict[str, list[np.ndarray]]:
  """A run directory as cfal's builder saves one: a checkpoint of backbone,
  head, step and model identity per folder, each with other weights, and
  config.json. Returns the backbone's values per folder."""
  identity = identity or (f"head=softmax backbone={backbone.name} "
                          f"embedding_dim={backbone.output_shape[-1]}")
  checkpoint = tf.train.Checkpoint(
      backbone=backbone, head=tf.Variable(tf.ones([3, 2])),
      step=tf.Variable(0, dtype=tf.int64),
      model_identity=tf.Variable(identity))
  saved = {}
  for k, folder in enumerate(folders):
    for variable in backbone.trainable_variables:
      variable.assign(variable + 0.01 * (k + 1))
    manager = tf.train.CheckpointManager(
        checkpoint, str(run / "checkpoints" / folder), max_to_keep=1)
    manager.save(checkpoint_number=10 * (k + 1))
    saved[folder] = _values(backbone.variables)
  name, _, dim = identity.partition("backbone=")[2].partition(
      " embedding_dim=")
  (run / "config.json").write_text(json.dumps({"model": {
      "backbone": name, "embedding_dim": int(dim),
      "backbone_args": backbone_args or {}}}))
  return saved


def test_a_run_directory_gives_its_best_backbone_else_its_latest(tmp_path):
  run = tmp_path / "run"
  saved = _write_run(run, _build(seed=5))
  target = _build(seed=6)
  said = load_pretrained(target, run)
  assert "best/ckpt-10" in said
  _assert_equal(_values(target.variables), saved["best"])
  for piece in (run / "checkpoints" / "best").iterdir():
    piece.unlink()
  load_pretrained(target, run)
  _assert_equal(_values(target.variables), saved[""])
  target = _build(seed=7)
  load_pretrained(target, run / "checkpoints" / "ckpt-20")
  _assert_equal(_values(target.variables), saved[""])


def test_a_run_of_another_model_is_one_line_and_changes_nothing(tmp_path):
  target = _build(seed=8)
  before = _values(target.variables)
  cases = (
      ("resnet", f"head=cfal backbone=resnet embedding_dim={DIM}",
       "holds a resnet backbone"),
      ("dim", f"head=cfal backbone={NAME} embedding_dim=9",
       "embedding_dim=9, not"),
  )
  for folder, identity, words in cases:
    _write_run(tmp_path / folder, _build(seed=9), identity=identity,
               folders=("",))
    with pytest.raises(UsageError, match=words) as info:
      load_pretrained(target, tmp_path / folder)
    _one_line(info.value)
    _assert_equal(_values(target.variables), before)


def test_a_run_with_other_backbone_options_names_them(tmp_path):
  def resnet(width, depths):
    return build_backbone("resnet", input_shape=(28, 28, 1), embedding_dim=4,
                          seed=0, width=width, depth_per_stage=depths)

  for folder, width, depths in (("wider", 8, (1, 1)), ("deeper", 4, (1, 2)),
                                ("shallower", 4, (1,))):
    args = {"width": width, "depth_per_stage": list(depths)}
    _write_run(tmp_path / folder, resnet(width, depths), backbone_args=args,
               folders=("",))
    target = resnet(4, (1, 1))
    before = _values(target.variables)
    with pytest.raises(UsageError, match="built with other options") as info:
      load_pretrained(target, tmp_path / folder)
    assert "'depth_per_stage'" in _one_line(info.value)
    _assert_equal(_values(target.variables), before)


def test_transfer_from_a_real_training_run(tmp_path):
  """Two steps of train.py's loop with seed_cnn (about 10 s); the backbone
  of its best checkpoint, else its latest, as eval.py restores it."""
  # pylint: disable=import-outside-toplevel
  from cfal.training import build as build_lib
  from cfal.training.runner import train
  from support.training import small_config
  config = small_config(tmp_path / "run", train_steps=2, steps_per_loop=1,
                        checkpoint_every=2)
  train(config, echo=lambda *args, **kwargs: None)
  folder = tmp_path / "run" / "checkpoints"
  prefix = (tf.train.latest_checkpoint(str(folder / "best"))
            or tf.train.latest_checkpoint(str(folder)))
  built = build_lib.build(config, training=False)
  built.checkpoint.read(prefix).expect_partial()
  target = build_backbone("seed_cnn", input_shape=built.data.image_shape,
                          embedding_dim=config.model.embedding_dim, seed=1,
                          normalize=False)
  assert prefix in load_pretrained(target, tmp_path / "run")
  _assert_equal(_values(target.weights), _values(built.backbone.weights))


def test_weights_load_into_every_replica_of_a_mirrored_backbone(
    reference, tmp_path):
  application, path = reference
  saved = _write_run(tmp_path / "run", _build(seed=5), folders=("",))[""]
  with mirrored_strategy(2).scope():
    model = _build(seed=6)
  load_pretrained(model, path)
  for variable, want in zip(application_body(model).weights,
                            application.weights, strict=True):
    for replica in variable.value.values:
      np.testing.assert_array_equal(replica.numpy(), want.numpy())
  load_pretrained(model, tmp_path / "run")
  for variable, want in zip(model.variables, saved, strict=True):
    assert len(variable.value.values) == 2
    for replica in variable.value.values:
      np.testing.assert_array_equal(replica.numpy(), want)
