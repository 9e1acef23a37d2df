"""Image trees with one subfolder per class, e.g. NCT-CRC-HE-100K.

The layout is `root/<class_name>/**/<image>`: every non-hidden subfolder of
`root` is a class (labels follow the sorted folder names), and every image
below it, at any depth, is a sample of that class. Files are recognised by
their extension (case-insensitive): .png .jpg .jpeg .bmp .gif .tif .tiff;
hidden files and folders (name starting with ".") and other files are
ignored.

:func:`scan_image_folder` lists the tree and checks every file with Pillow;
:func:`decode_image` turns a path into a float32 image inside a `tf.data`
pipeline:

  index = scan_image_folder(root)
  ds = tf.data.Dataset.from_tensor_slices((list(index.paths), index.labels))
  ds = ds.map(lambda p, y: (decode_image(p, image_size=(224, 224),
                                         channels=index.channels), y),
              num_parallel_calls=tf.data.AUTOTUNE)

Class sizes are `folder_class_counts(index)`, i.e.
`np.bincount(index.labels, minlength=len(index.class_names))`.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf
from PIL import Image

from cfal.data.errors import DataError

__all__ = ["FolderIndex", "IMAGE_EXTENSIONS", "decode_image",
           "folder_class_counts", "scan_image_folder"]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")

# Pillow modes that hold one grey channel (possibly with alpha, dropped on
# conversion); every other mode (RGB, RGBA, P, CMYK, YCbCr, ...) becomes RGB.
_GRAY_MODES = frozenset(
    {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

# Leading bytes of the formats tf.io.decode_image decodes correctly (PNG,
# JPEG, GIF). Everything else goes through Pillow: TIFF, which TensorFlow
# cannot read, and BMP, whose 8-bit palette images TensorFlow 2.21 decodes
# as raw palette indices.
_TF_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a",
                  b"GIF89a")


@dataclasses.dataclass(frozen=True, eq=False)
class FolderIndex:
  """The images found under a class-per-subfolder root.

  Attributes:
    paths: Readable image files, grouped by class, sorted within a class.
    labels: int32 `[len(paths)]`, indices into `class_names` (read-only).
    class_names: Sorted names of the class subfolders.
    bad_files: `(path, reason)` of each image file that could not be read.
    channels: 1 or 3, the channel count most of `paths` have once greyscale
      modes become 1 channel and all others (RGBA, palette, CMYK, ...)
      become RGB; 3 on a tie. Pass it to :func:`decode_image`.
    mixed_channels: Whether `paths` have both 1 and 3 channels in that
      sense, so that some images will be converted to `channels`.
  """

  paths: tuple[str, ...]
  labels: np.ndarray
  class_names: tuple[str, ...]
  bad_files: tuple[tuple[str, str], ...]
  channels: int
  mixed_channels: bool


def folder_class_counts(index: FolderIndex) -> np.ndarray:
  """Number of readable images per class.

  Args:
    index: A :func:`scan_image_folder` result.

  Returns:
    int64 `[len(index.class_names)]`.
  """
  return np.bincount(index.labels, minlength=len(index.class_names))


def _is_hidden(name: str) -> bool:
  return name.startswith(".")


def _list_class(class_dir: str) -> list[str]:
  """Sorted image files below `class_dir`, skipping hidden entries."""
  found = []
  for parent, dirs, files in os.walk(class_dir, followlinks=True):
    dirs[:] = [d for d in dirs if not _is_hidden(d)]
    for name in files:
      if (not _is_hidden(name)
          and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS):
        found.append(os.path.join(parent, name))
  return sorted(found)


def _reason(e: BaseException, path: str) -> str:
  """`TypeName: message` on one line, without the path it is listed with."""
  message = " ".join(str(e).replace(f" {path!r}", "").split())
  return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _probe(path: str, full: bool) -> tuple[int, str | None]:
  """(channels, None) for a readable image, (0, reason) otherwise."""
  try:
    with Image.open(path) as image:
      if full:
        image.load()
      return (1 if image.mode in _GRAY_MODES else 3), None
  # Pillow signals a bad file with many exception types (OSError,
  # SyntaxError, ValueError, struct.error, DecompressionBombError, ...);
  # any of them means the file cannot be used.
  except Exception as e:  # pylint: disable=broad-except
    return 0, _reason(e, path)


def scan_image_folder(
    root: str | os.PathLike[str],
    *,
    verify: str = "full",
    num_workers: int = 8,
) -> FolderIndex:
  """Lists and checks the images of a class-per-subfolder tree.

  Args:
    root: The folder whose subfolders are the classes.
    verify: `"full"` decodes every file with Pillow, so truncated and
      corrupt files land in `bad_files`; `"header"` only opens them (fast,
      catches files that are not images at all).
    num_workers: Threads checking files in parallel (Pillow releases the
      GIL while decoding).

  Returns:
    A `FolderIndex` of the readable images.

  Raises:
    ValueError: If `verify` or `num_workers` is invalid.
    DataError: If `root` is missing or not a folder, holds no images,
      has images in only one class, has a class folder without image
      files, or one whose image files are all unreadable.
  """
  if verify not in ("full", "header"):
    raise ValueError(f"verify must be 'full' or 'header', got {verify!r}")
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers}")
  root = os.fspath(root)
  if not os.path.exists(root):
    raise DataError(f"{root}: image folder not found")
  if not os.path.isdir(root):
    raise DataError(f"{root}: not a folder (expected root/<class>/<image>)")
  try:
    with os.scandir(root) as entries:
      class_names = tuple(sorted(
          e.name for e in entries if e.is_dir() and not _is_hidden(e.name)))
    files = {name: _list_class(os.path.join(root, name))
             for name in class_names}
  except OSError as e:
    raise DataError(f"{root}: cannot list ({e.strerror or e})") from e
  extensions = " ".join(IMAGE_EXTENSIONS)
  with_images = [name for name in class_names if files[name]]
  if not with_images:
    raise DataError(
        f"{root}: no image files ({extensions}) in any class subfolder "
        "(expected root/<class>/<image>)")
  empty = [name for name in class_names if not files[name]]
  if empty:
    raise DataError(
        f"{root}: class folder(s) {', '.join(empty)} hold no image files "
        f"({extensions}); remove them or add images")
  if len(class_names) == 1:
    raise DataError(
        f"{root}: images in only one class folder ({class_names[0]}); "
        "point root at the folder whose subfolders are the classes")

  all_paths = [p for name in class_names for p in files[name]]
  full = verify == "full"
  with ThreadPoolExecutor(max_workers=min(num_workers, len(all_paths))) as ex:
    probes = list(ex.map(lambda p: _probe(p, full), all_paths))

  paths: list[str] = []
  labels: list[int] = []
  bad: list[tuple[str, str]] = []
  channel_counts: collections.Counter[int] = collections.Counter()
  position = 0
  for label, name in enumerate(class_names):
    class_paths = files[name]
    class_probes = probes[position:position + len(class_paths)]
    position += len(class_paths)
    good = 0
    for path, (channels, reason) in zip(class_paths, class_probes):
      if reason is None:
        paths.append(path)
        labels.append(label)
        channel_counts[channels] += 1
        good += 1
      else:
        bad.append((path, reason))
    if not good:
      raise DataError(
          f"{os.path.join(root, name)}: all {len(class_paths)} image files "
          f"are unreadable (e.g. {os.path.basename(class_paths[0])}: "
          f"{class_probes[0][1]})")

  label_array = np.asarray(labels, np.int32)
  label_array.setflags(write=False)
  return FolderIndex(
      paths=tuple(paths),
      labels=label_array,
      class_names=class_names,
      bad_files=tuple(bad),
      channels=1 if channel_counts[1] > channel_counts[3] else 3,
      mixed_channels=len(channel_counts) > 1,
  )


def _pillow_decode(contents: bytes | np.ndarray, channels: int) -> np.ndarray:
  """Decodes image bytes with Pillow to float32 `[H, W, channels]`."""
  if isinstance(contents, np.ndarray):  # Eager numpy_function: 0-d object.
    contents = contents.item()
  with Image.open(io.BytesIO(contents)) as image:
    if image.mode in _16BIT_MODES:
      array = np.asarray(image, np.float32)[..., None] / 65535.0
      if channels == 3:
        array = np.repeat(array, 3, axis=-1)
    else:
      mode = "L" if channels == 1 else "RGB"
      array = np.asarray(image.convert(mode), np.float32) / 255.0
  return array.reshape(array.shape[0], array.shape[1], channels)


def decode_image(
    path: tf.Tensor,
    *,
    image_size: Sequence[int],
    channels: int,
) -> tf.Tensor:
  """Reads and decodes one image file; usable inside `tf.data` maps.

  PNG, JPEG and GIF (the first frame) are decoded by TensorFlow; any other
  content, TIFF and BMP included, by Pillow through `tf.numpy_function`.
  The choice follows the file's first bytes, so misnamed files decode too.
  Alpha is dropped; greyscale becomes RGB by repetition and RGB becomes
  greyscale with the ITU-R 601 luma weights.

  Args:
    path: Scalar string tensor, the file's path.
    image_size: `(height, width)` of the output.
    channels: 1 (greyscale) or 3 (RGB); usually `FolderIndex.channels`.

  Returns:
    float32 `[height, width, channels]` in [0, 1], resized with bilinear
    interpolation and antialiasing.

  Raises:
    ValueError: If `image_size` or `channels` is invalid (at trace time).
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  size = tuple(int(s) for s in image_size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(
        f"image_size must be (height, width) > 0, got {image_size}")
  contents = tf.io.read_file(path)

  def with_tensorflow() -> tf.Tensor:
    # channels=3 for every format: BMP and GIF refuse channels=1.
    image = tf.io.decode_image(contents, channels=3, dtype=tf.float32,
                               expand_animations=False)
    if channels == 1:
      image = tf.image.rgb_to_grayscale(image)
    return tf.ensure_shape(image, [None, None, channels])

  def with_pillow() -> tf.Tensor:
    image = tf.numpy_function(lambda b: _pillow_decode(b, channels),
                              [contents], tf.float32, stateful=False)
    return tf.ensure_shape(image, [None, None, channels])

  use_tensorflow = tf.reduce_any(tf.stack([
      tf.equal(tf.strings.substr(contents, 0, len(sig)), sig)
      for sig in _TF_SIGNATURES]))
  image = tf.cond(use_tensorflow, with_tensorflow, with_pillow)
  image = tf.image.resize(image, size, method="bilinear", antialias=True)
  image = tf.clip_by_value(image, 0.0, 1.0)
  image.set_shape([size[0], size[1], channels])
  return image
