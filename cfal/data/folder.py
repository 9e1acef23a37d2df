"""Image trees with one subfolder per class, e.g. NCT-CRC-HE-100K.

The layout is `root/<class_name>/**/<image>`: every non-hidden subfolder of
`root` is a class (labels follow the sorted folder names), and every image
below it, at any depth, is a sample of that class. Files are recognised by
their extension (case-insensitive): .png .jpg .jpeg .bmp .gif .tif .tiff;
hidden files and folders (name starting with ".") and other files are
ignored.

:func:`scan_image_folder` lists the tree and checks every file with Pillow
(once: unchanged files are remembered in a scan cache, see
:mod:`cfal.data.scan`);
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
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from cfal.data import scan
from cfal.data.errors import DataError

__all__ = ["FolderIndex", "IMAGE_EXTENSIONS", "decode_image",
           "folder_class_counts", "scan_image_folder"]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")

_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

# Leading bytes of the formats tf.io.decode_image decodes correctly (PNG,
# JPEG, GIF). Everything else goes through Pillow: TIFF, which TensorFlow
# cannot read, and BMP, whose 8-bit palette images TensorFlow 2.21 decodes
# as raw palette indices.
_TF_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a",
                  b"GIF89a")


@dataclasses.dataclass(frozen=True, eq=False)
class FolderIndex:
  """The images found under a class-per-subfolder root (or in a manifest).

  Attributes:
    paths: Readable image files, grouped by class, sorted within a class
      (a manifest keeps its row order within a class).
    labels: int32 `[len(paths)]`, indices into `class_names` (read-only).
    class_names: Sorted names of the class subfolders.
    bad_files: `(path, reason)` of each image file that could not be read.
    channels: 1 or 3, the channel count most of `paths` have once greyscale
      modes become 1 channel and all others (RGBA, palette, CMYK, ...)
      become RGB; 3 on a tie. Pass it to :func:`decode_image`.
    mixed_channels: Whether `paths` have both 1 and 3 channels in that
      sense, so that some images will be converted to `channels`.
    relative_paths: Each of `paths` as the user names it: relative to the
      root with "/" separators (a manifest: as its row writes it). Group
      patterns are searched in these, and split records list them.
    groups: A manifest's group column, one per path (None without one).
    verified: Files decoded by this scan.
    reused: Files whose check came from the scan cache.
    cache_file: The scan cache used, None if none could be read or written.
  """

  paths: tuple[str, ...]
  labels: np.ndarray
  class_names: tuple[str, ...]
  bad_files: tuple[tuple[str, str], ...]
  channels: int
  mixed_channels: bool
  relative_paths: tuple[str, ...] = ()
  groups: tuple[str, ...] | None = None
  verified: int = 0
  reused: int = 0
  cache_file: str | None = None


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


def scan_image_folder(
    root: str | os.PathLike[str],
    *,
    verify: str = "full",
    num_workers: int = 8,
    use_cache: bool = True,
    progress: Callable[[scan.ScanProgress], None] | None = None,
) -> FolderIndex:
  """Lists and checks the images of a class-per-subfolder tree.

  Files checked by an earlier scan and unchanged since (same size and
  modification time) are not decoded again: see :mod:`cfal.data.scan` for
  the cache (`$CFAL_CACHE_DIR/scans/`, default `~/.cache/cfal/scans/`).

  Args:
    root: The folder whose subfolders are the classes.
    verify: `"full"` decodes every file with Pillow, so truncated and
      corrupt files land in `bad_files`; `"header"` only opens them (fast,
      catches files that are not images at all).
    num_workers: Threads checking files in parallel (Pillow releases the
      GIL while decoding).
    use_cache: Read and update the scan cache.
    progress: Called with a `scan.ScanProgress` every few seconds while
      files are decoded (`scan.print_progress()` prints it to stderr).

  Returns:
    A `FolderIndex` of the readable images.

  Raises:
    ValueError: If `verify` or `num_workers` is invalid.
    DataError: If `root` is missing or not a folder, holds no images,
      has images in only one class, has a class folder without image
      files, or one whose image files are all unreadable.
  """
  if verify not in scan.VERIFY_MODES:
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

  # Every listed path starts with os.path.join(root, class_name).
  prefix = len(os.path.join(root, ""))
  items = [(label, path, path[prefix:].replace(os.sep, "/"))
           for label, name in enumerate(class_names)
           for path in files[name]]
  result = scan.check_files(
      root, [rel for _, _, rel in items], [path for _, path, _ in items],
      kind="folder", verify=verify, num_workers=num_workers,
      use_cache=use_cache, progress=progress)

  def all_bad(label: int, count: int, path: str, reason: str) -> str:
    return (f"{os.path.join(root, class_names[label])}: all {count} image "
            f"files are unreadable (e.g. {os.path.basename(path)}: "
            f"{reason})")

  return build_index(class_names, items, result, all_bad=all_bad)


def build_index(
    class_names: tuple[str, ...],
    items: Sequence[tuple[int, str, str]],
    result: scan.ScanResult,
    *,
    all_bad: Callable[[int, int, str, str], str],
    groups: Sequence[str] | None = None,
) -> FolderIndex:
  """A `FolderIndex` from listed files and what checking them found.

  Args:
    class_names: the classes, in label order.
    items: `(label, path, relative path)` of every file listed.
    result: `scan.check_files` of those files, in the same order.
    all_bad: `(label, count, first path, its reason)` -> the message of the
      DataError raised when every file of a class is unusable.
    groups: a group name per item, kept for the readable ones.

  Raises:
    DataError: if every file of some class is unusable.
  """
  paths: list[str] = []
  relative: list[str] = []
  labels: list[int] = []
  kept_groups: list[str] = []
  bad: list[tuple[str, str]] = []
  channel_counts: collections.Counter[int] = collections.Counter()
  per_class = collections.Counter(label for label, _, _ in items)
  good_per_class: collections.Counter[int] = collections.Counter()
  first_bad: dict[int, tuple[str, str]] = {}
  for i, ((label, path, rel), check) in enumerate(zip(items, result.checks)):
    if check.reason is None:
      paths.append(path)
      relative.append(rel)
      labels.append(label)
      if groups is not None:
        kept_groups.append(groups[i])
      channel_counts[check.channels] += 1
      good_per_class[label] += 1
    else:
      bad.append((path, check.reason))
      first_bad.setdefault(label, (path, check.reason))
  for label in range(len(class_names)):
    if per_class[label] and not good_per_class[label]:
      raise DataError(all_bad(label, per_class[label], *first_bad[label]))

  label_array = np.asarray(labels, np.int32)
  label_array.setflags(write=False)
  return FolderIndex(
      paths=tuple(paths),
      labels=label_array,
      class_names=tuple(class_names),
      bad_files=tuple(bad),
      channels=1 if channel_counts[1] > channel_counts[3] else 3,
      mixed_channels=len(channel_counts) > 1,
      relative_paths=tuple(relative),
      groups=tuple(kept_groups) if groups is not None else None,
      verified=result.verified,
      reused=result.reused,
      cache_file=result.cache_file,
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
