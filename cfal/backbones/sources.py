"""Where pretrained backbone weights come from (no TensorFlow).

A pretrained source is one of:

- `"imagenet"`: the ImageNet weights Keras Applications publishes for the
  network (the "notop" file: everything below the classifier), fetched
  once with `keras.utils.get_file` into `$KERAS_HOME/models/` (`~/.keras`
  when KERAS_HOME is unset), the file and folder `keras.applications`
  itself uses with `weights="imagenet"`;
- a weights file: the Keras Applications `.h5` file as downloaded, or a
  `.weights.h5` file Keras 3 wrote (`model.save_weights`) of a cfal
  backbone or of the Keras application alone;
- a cfal run directory (its best checkpoint, else its latest) or one
  checkpoint prefix (`.../checkpoints/ckpt-842`): the backbone of another
  cfal run, for transfer between runs.

This module only names and classifies sources, so train.py can refuse a
bad one before TensorFlow loads; `cfal.backbones.pretrained.load_pretrained`
loads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib

from cfal.errors import UsageError

_KERAS_APPLICATIONS = ("https://storage.googleapis.com/tensorflow/"
                       "keras-applications/")


@dataclasses.dataclass(frozen=True)
class WeightsFile:
  """One published weights file, as `keras.applications` fetches it.

  Attributes:
    name: the file's name in the Keras cache folder.
    origin: its URL.
    file_hash: its md5 (32 hex digits) or sha256 (64) digest, which
      `keras.utils.get_file` checks.
  """

  name: str
  origin: str
  file_hash: str

  def matches(self, path: str | os.PathLike) -> bool:
    """Whether the file at `path` has this file's digest."""
    digest = (hashlib.sha256() if len(self.file_hash) == 64
              else hashlib.md5(usedforsecurity=False))
    with open(path, "rb") as handle:
      for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest() == self.file_hash


def _published(folder: str, name: str, file_hash: str) -> WeightsFile:
  return WeightsFile(name, f"{_KERAS_APPLICATIONS}{folder}/{name}", file_hash)


# The "notop" ImageNet files of Keras 3's applications (the URLs and digests
# its `resnet.py`, `densenet.py`, ... pass to `get_file`; a test checks they
# still agree).
IMAGENET_WEIGHTS: dict[str, WeightsFile] = {
    "resnet50": _published(
        "resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626"),
    "densenet121": _published(
        "densenet", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738"),
    "efficientnetv2_b0": _published(
        "efficientnet_v2", "efficientnetv2-b0_notop.h5",
        "893217f2bb855e2983157299931e43ff"),
    "efficientnetv2_s": _published(
        "efficientnet_v2", "efficientnetv2-s_notop.h5",
        "af0682fb74e8c54910f2d4393339c070"),
    "convnext_tiny": _published(
        "convnext", "convnext_tiny_notop.h5",
        "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"),
    "mobilenetv3_large": _published(
        "mobilenet_v3", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "07fb09a5933dd0c8eaafa16978110389"),
}

IMAGENET = "imagenet"
# Kinds of source, as `source_kind` names them.
KINDS = ("imagenet", "keras_h5", "weights_h5", "run", "checkpoint")


def keras_models_dir() -> pathlib.Path:
  """The folder Keras caches application weights in: `$KERAS_HOME/models`.

  Without KERAS_HOME it is `~/.keras/models`, or `/tmp/.keras/models` when
  the home folder is not writable (Keras's own rule). Read from the
  environment at each call, so a KERAS_HOME set after Keras was imported
  counts too.
  """
  home = os.environ.get("KERAS_HOME")
  if not home:
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
      base = "/tmp"
    home = os.path.join(base, ".keras")
  return pathlib.Path(os.path.expanduser(home)).absolute() / "models"


def source_kind(source: str | os.PathLike) -> str:
  """Which kind of pretrained source `source` is (one of `KINDS`).

  Raises:
    UsageError: `source` is neither "imagenet" nor an existing weights
      file, run directory or checkpoint prefix (one line).
  """
  text = os.fspath(source)
  if text == IMAGENET:
    return "imagenet"
  path = pathlib.Path(text).expanduser()
  if path.is_dir():
    if run_checkpoint_folders(path):
      return "run"
    raise UsageError(f"Pretrained source {text} is a folder without cfal "
                     f"checkpoints (no checkpoints/checkpoint or "
                     f"checkpoints/best/checkpoint in it): name a run "
                     f"directory that has saved a checkpoint.")
  if path.is_file():
    if path.name.endswith(".weights.h5"):
      return "weights_h5"
    if path.suffix in (".h5", ".hdf5"):
      return "keras_h5"
    if path.suffix == ".index":
      return "checkpoint"
    raise UsageError(f"Pretrained source {text} is not a weights file cfal "
                     f"reads: give a Keras Applications .h5 file, a Keras "
                     f".weights.h5 file, a cfal run directory or a "
                     f"checkpoint prefix.")
  if pathlib.Path(f"{text}.index").is_file():
    return "checkpoint"
  raise UsageError(f"Pretrained source {text} does not exist: give "
                   f"'imagenet', a weights file, a cfal run directory or a "
                   f"checkpoint prefix.")


def check_source(backbone: str, source: str | os.PathLike) -> str:
  """`source_kind(source)`, after checking `backbone` can take it.

  Only the Keras Applications backbones have ImageNet weights; every
  backbone takes the other kinds.

  Raises:
    UsageError: one line, as `source_kind`, or "imagenet" for a backbone
      without published weights.
  """
  kind = source_kind(source)
  if kind == "imagenet" and backbone not in IMAGENET_WEIGHTS:
    raise UsageError(f"--backbone={backbone} has no ImageNet weights; the "
                     f"backbones with them are "
                     f"{', '.join(IMAGENET_WEIGHTS)}.")
  return kind


def run_checkpoint_folders(run: str | os.PathLike) -> list[pathlib.Path]:
  """`<run>/checkpoints/best` and `<run>/checkpoints`, those with a state
  file, in the order a transfer tries them (the best model first)."""
  run = pathlib.Path(run).expanduser()
  folders = (run / "checkpoints" / "best", run / "checkpoints")
  return [folder for folder in folders if (folder / "checkpoint").is_file()]
