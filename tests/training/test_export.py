"""The exported SavedModel as serving tools see it: its signatures, the
bytes signature's decoding against the training pipeline's, and calls
through `saved_model_cli` and a Python that imports only TensorFlow."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cfal.data import folder
from cfal.data.datasets import DataConfig
from cfal.training.build import build
from cfal.training.export import export_saved_model
from support.training import small_config

SAVED_MODEL_CLI = pathlib.Path(sys.executable).with_name("saved_model_cli")
OUTPUTS = {"class_ids", "class_names", "scores", "embeddings"}


def _export(config, directory):
  built = build(config, training=False)
  return export_saved_model(
      directory, backbone=built.backbone, head=built.head,
      image_shape=built.data.image_shape,
      class_names=built.data.class_names, step=7)


def _write_files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  """Files of every kind the bytes signature takes, none 24x24 RGB."""
  rng = np.random.default_rng(1)
  directory.mkdir()

  def pixels(height, width, channels=3):
    return (rng.random((height, width, channels)) * 255).astype(np.uint8)

  files = {}
  def save(name, image, **options):
    files[name] = directory / name
    image.save(files[name], **options)
  save("rgb.png", Image.fromarray(pixels(40, 32)))
  save("rgb.jpg", Image.fromarray(pixels(30, 50)), quality=90)
  save("grey.png", Image.fromarray(pixels(24, 24, 1)[..., 0]))
  save("grey.jpg", Image.fromarray(pixels(28, 28, 1)[..., 0]), quality=90)
  save("rgba.png", Image.fromarray(pixels(20, 20, 4)))
  frames = [Image.fromarray(pixels(18, 26)).convert("P") for _ in range(2)]
  save("animated.gif", frames[0], save_all=True, append_images=frames[1:])
  save("rgb.bmp", Image.fromarray(pixels(25, 23)))
  return files


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """A 24x24 RGB image-folder model, a 28x28x1 Fashion-MNIST model (both
  untrained: only the export's plumbing is under test) and test files."""
  root = tmp_path_factory.mktemp("export")
  rng = np.random.default_rng(0)
  tiles = root / "tiles"
  for c, name in enumerate(["stroma", "tumour"]):
    (tiles / name).mkdir(parents=True)
    for i in range(6):
      Image.fromarray((rng.random((36, 30, 3)) * 100 + 80 * c).astype(
          np.uint8)).save(tiles / name / f"{i}.png")
  rgb = _export(small_config(root / "rgb_run", data=DataConfig(
      name=f"folder:{tiles}", image_size=24, validation_split=0.2),
      batch_size=4), root / "rgb_export")
  digits = _export(small_config(root / "digits_run"), root / "digits_export")
  return {"rgb": rgb, "digits": digits,
          "files": _write_files(root / "files"), "root": root}


def _pipeline_image(path, image_shape):
  """What training makes of the file at `path`."""
  return folder.decode_image(tf.constant(str(path)),
                             image_size=image_shape[:2],
                             channels=image_shape[2]).numpy()


@pytest.mark.parametrize("kind,image_shape", [("rgb", (24, 24, 3)),
                                              ("digits", (28, 28, 1))])
def test_bytes_signature_decodes_and_classifies_like_training(
    exports, kind, image_shape):
  model = tf.saved_model.load(str(exports[kind]))
  assert set(model.signatures) == {"serving_default", "classify", "embed",
                                   "classify_image_bytes"}
  by_bytes = model.signatures["classify_image_bytes"]
  by_images = model.signatures["classify"]
  assert set(by_bytes.structured_outputs) == OUTPUTS
  assert (by_bytes.structured_input_signature[1]["image_bytes"].shape
          .as_list() == [None])
  for name, path in exports["files"].items():
    want_image = _pipeline_image(path, image_shape)
    contents = tf.constant([path.read_bytes()] * 2)
    got_image = model.decode_images(contents).numpy()
    assert got_image.shape == (2, *image_shape), name
    np.testing.assert_allclose(got_image[0], want_image, atol=1e-6,
                               err_msg=name)
    got = by_bytes(image_bytes=contents)
    want = by_images(images=tf.constant(want_image[None]))
    np.testing.assert_allclose(got["embeddings"].numpy()[1],
                               want["embeddings"].numpy()[0], atol=1e-5,
                               err_msg=name)
    np.testing.assert_allclose(got["scores"].numpy()[1],
                               want["scores"].numpy()[0], atol=1e-4,
                               rtol=1e-5, err_msg=name)
    assert got["class_ids"].numpy()[1] == want["class_ids"].numpy()[0]
    assert got["class_names"].numpy()[1] == want["class_names"].numpy()[0]
  serving = model.signatures["serving_default"]
  images = tf.random.stateless_uniform([3, *image_shape], seed=[1, 2])
  np.testing.assert_array_equal(serving(images=images)["embeddings"],
                                by_images(images=images)["embeddings"])


def test_digit_models_read_a_28x28_grey_png_as_the_array_they_trained_on(
    exports):
  """Fashion-MNIST trains on uint8 arrays / 255; the same pixels as a PNG
  differ only by the luma weights' sum (0.9999) of the grey->RGB->grey
  round trip the image-folder pipeline also makes."""
  model = tf.saved_model.load(str(exports["digits"]))
  pixels = (np.random.default_rng(2).random((28, 28)) * 255).astype(np.uint8)
  png = exports["root"] / "digit.png"
  Image.fromarray(pixels).save(png)
  decoded = model.decode_images(tf.constant([png.read_bytes()])).numpy()
  np.testing.assert_allclose(decoded[0, ..., 0], pixels / 255.0, atol=2e-4)


def test_files_decoded_differently_in_training_are_refused(exports):
  model = tf.saved_model.load(str(exports["rgb"]))
  image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
  for name, kind in [("tile.tif", "TIFF"), ("palette.bmp", "BMP")]:
    path = exports["root"] / name
    (image.convert("P") if kind == "BMP" else image).save(path)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="not a PNG, JPEG, GIF or 24/32-bit BMP"):
      model.signatures["classify_image_bytes"](
          image_bytes=tf.constant([path.read_bytes()]))


def _start(args) -> subprocess.Popen:
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.Popen(args, cwd="/", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)


def _output(process: subprocess.Popen, timeout=300) -> str:
  stdout, stderr = process.communicate(timeout=timeout)
  assert process.returncode == 0, stderr[-3000:]
  return stdout


def _printed(stdout: str, key: str) -> str:
  """The value `saved_model_cli run` printed for output `key`."""
  found = re.search(rf"Result for output key {key}:\n(.*?)"
                    r"(?=\nResult for output key |\nOutput \w+ is saved|\Z)",
                    stdout, re.S)
  assert found, stdout[-3000:]
  return found.group(1)


def test_saved_model_cli_shows_and_runs_both_signatures(exports, tmp_path):
  export = str(exports["rgb"])
  model = tf.saved_model.load(export)
  tile = exports["files"]["rgb.png"]
  image = _pipeline_image(tile, (24, 24, 3))[None]
  expected = model.classify(image)
  want = int(expected["class_ids"].numpy()[0])
  name = model.class_names.numpy()[want].decode()
  np.save(tmp_path / "images.npy", image)
  # A fixed-width bytes array: no pickle needed to save or load it.
  files = np.array([tile.read_bytes()])
  assert files.dtype.kind == "S"
  np.save(tmp_path / "files.npy", files, allow_pickle=False)
  runs = {"serving_default": "images=" + str(tmp_path / "images.npy"),
          "classify_image_bytes": ("image_bytes="
                                   + str(tmp_path / "files.npy"))}
  # Side by side: each one spends most of its time importing TensorFlow.
  show = _start([str(SAVED_MODEL_CLI), "show", "--dir", export, "--all"])
  started = {signature: _start([
      str(SAVED_MODEL_CLI), "run", "--dir", export, "--tag_set", "serve",
      "--signature_def", signature, "--inputs", inputs,
      "--outdir", str(tmp_path / signature)])
             for signature, inputs in runs.items()}

  shown = _output(show)
  for signature in ("serving_default", "classify", "embed",
                    "classify_image_bytes"):
    assert f"signature_def['{signature}']:" in shown
  assert "inputs['images'] tensor_info:" in shown
  assert "inputs['image_bytes'] tensor_info:" in shown
  for signature, process in started.items():
    stdout = _output(process)
    assert _printed(stdout, "class_ids").strip() == f"[{want}]", signature
    assert _printed(stdout, "class_names").strip() == f"[b'{name}']"
    # --outdir saved every output as .npy, too.
    np.testing.assert_allclose(
        np.load(tmp_path / signature / "embeddings.npy"),
        expected["embeddings"], atol=1e-5, err_msg=signature)


def test_export_serves_in_a_python_that_imports_only_tensorflow(
    exports, tmp_path):
  tile = exports["files"]["rgb.jpg"]
  image = _pipeline_image(tile, (24, 24, 3))[None]
  np.save(tmp_path / "images.npy", image)
  script = textwrap.dedent(f"""
      import sys, numpy as np, tensorflow as tf
      model = tf.saved_model.load({str(exports['rgb'])!r})
      images = tf.constant(np.load({str(tmp_path / 'images.npy')!r}))
      with open({str(tile)!r}, "rb") as f:
        contents = tf.constant([f.read()])
      a = model.signatures["serving_default"](images=images)
      b = model.signatures["classify_image_bytes"](image_bytes=contents)
      np.savez({str(tmp_path / 'out.npz')!r},
               a=a["embeddings"].numpy(), b=b["embeddings"].numpy(),
               ids=np.concatenate([a["class_ids"], b["class_ids"]]))
      assert "cfal" not in sys.modules
      assert not any(m.startswith("cfal.") for m in sys.modules)
      """)
  _output(_start([sys.executable, "-c", script]))
  out = np.load(tmp_path / "out.npz")
  model = tf.saved_model.load(str(exports["rgb"]))
  want = model.classify(image)
  np.testing.assert_allclose(out["a"], want["embeddings"], atol=1e-5)
  np.testing.assert_allclose(out["b"], want["embeddings"], atol=1e-5)
  assert list(out["ids"]) == [want["class_ids"].numpy()[0]] * 2
