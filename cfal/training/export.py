"""Export a trained backbone + head as a self-contained SavedModel.

The SavedModel loads with TensorFlow alone (no cfal import) and serves
with the usual tools. Its signatures (`saved_model_cli show --all` lists
them):

  serving_default       input `images`, float32 [N, H, W, C] in [0, 1] at
                        the model's input size -> outputs class_ids int32
                        [N], class_names string [N], scores float32
                        [N, num_classes], embeddings float32 [N, D]. What
                        TensorFlow Serving runs when a request names no
                        signature.
  classify              the same function as serving_default.
  embed                 input `images` -> embeddings only.
  classify_image_bytes  input `image_bytes`, string [N], each the contents
                        of a PNG, JPEG, GIF (first frame) or 24/32-bit BMP
                        file of any size and colour mode -> the outputs of
                        classify. Only for 1- or 3-channel models (all that
                        cfal's datasets make).

`classify_image_bytes` turns a file into the float image training made of
it (`cfal.data.folder.decode_image`): alpha dropped, greyscale repeated to
RGB or RGB turned to grey (ITU-R 601 luma) to match the model's channels,
scaled to [0, 1], resized to the model's height and width (bilinear, with
antialiasing) and clipped to [0, 1]. Models of the built-in 28x28x1 sets
(Fashion-MNIST, MNIST) so decode files to 1 channel at 28x28. TIFF and
palette BMP files, which training reads with Pillow, are refused with an
error: convert them to PNG. `decode_images` (a function of the loaded
object, not a signature) returns those float images.

The loaded object also holds `class_names`, `step`, `embedding_metric`
and `class_counts` (int64, the training split's examples per class, so a
SavedModel carries its class priors: `scores - tau * log(counts /
counts.sum())` is Menon et al.'s post-hoc logit adjustment; exports made
before it have none).

With `saved_model_cli` (installed with TensorFlow; `run` needs the
signature named):

  saved_model_cli show --dir EXPORT --all
  saved_model_cli run --dir EXPORT --tag_set serve \
      --signature_def serving_default --inputs images=images.npy
  saved_model_cli run --dir EXPORT --tag_set serve \
      --signature_def classify_image_bytes --inputs image_bytes=files.npy

where images.npy holds a float32 [N, H, W, C] array and files.npy a numpy
bytes array, saved without pickle:
`np.save("files.npy", np.array([open("tile.png", "rb").read()]))`. (Its
dtype is `S`, whose items lose trailing NUL bytes: fine for PNG, JPEG and
GIF files, which never end with one; a BMP may.) `--outdir DIR` also saves
each output as DIR/<output>.npy.

TensorFlow Serving's REST API, by its documented conventions (not run by
cfal's tests): `POST /v1/models/<name>:predict` with the body

  {"instances": [<H x W x C nested lists of floats>, ...]}

for serving_default, and for files, each base64-encoded:

  {"signature_name": "classify_image_bytes",
   "instances": [{"b64": "<base64 of the file>"}, ...]}
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Sequence

import keras
import tensorflow as tf

from cfal.heads import Head

# Leading bytes of the files training decoded with TensorFlow (PNG, JPEG,
# GIF), as in `cfal.data.folder`; the bytes signature decodes those with
# the same operations. BMP, which training read with Pillow, is decoded
# here the way Pillow does it when it has 24 or 32 bits per pixel; palette
# BMPs (which TensorFlow decodes as raw palette indices) and TIFF (which it
# cannot read) are refused.
_TF_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a",
                  b"GIF89a")
_BMP_SIGNATURE = b"BM"
_BMP_DEPTH_OFFSET = 28   # bits per pixel, uint16 little-endian
# Pillow's RGB -> "L" conversion, in 16-bit fixed point with rounding.
_PILLOW_LUMA = (19595, 38470, 7471)


def _starts_with(contents: tf.Tensor, prefix: bytes) -> tf.Tensor:
  return tf.equal(tf.strings.substr(contents, 0, len(prefix)), prefix)


def _is_true_colour_bmp(contents: tf.Tensor) -> tf.Tensor:
  # Padded, so that short inputs cannot make substr fail.
  padded = contents + b"\0" * (_BMP_DEPTH_OFFSET + 2)
  depth = tf.io.decode_raw(
      tf.strings.substr(padded, _BMP_DEPTH_OFFSET, 2), tf.uint16,
      little_endian=True)[0]
  return tf.logical_and(
      _starts_with(contents, _BMP_SIGNATURE),
      tf.logical_or(tf.equal(depth, 24), tf.equal(depth, 32)))


def decode_image_bytes(contents: tf.Tensor, *, height: int, width: int,
                       channels: int) -> tf.Tensor:
  """One file's contents -> the float image training made of that file.

  Mirrors `cfal.data.folder.decode_image` in a graph that needs no
  Python: PNG, JPEG and GIF (first frame) with the same TensorFlow
  operations, 24/32-bit BMP as its Pillow path does. Alpha is dropped;
  greyscale becomes RGB by repetition and RGB becomes greyscale with the
  ITU-R 601 luma weights.

  Args:
    contents: Scalar string tensor, a PNG, JPEG, GIF or 24/32-bit BMP file.
    height: Output height.
    width: Output width.
    channels: 1 (greyscale) or 3 (RGB).

  Returns:
    float32 `[height, width, channels]` in [0, 1], resized with bilinear
    interpolation and antialiasing.

  Raises:
    tf.errors.InvalidArgumentError: When run on any other file.
  """
  by_tensorflow = tf.reduce_any(tf.stack(
      [_starts_with(contents, sig) for sig in _TF_SIGNATURES]))
  check = tf.debugging.Assert(
      tf.logical_or(by_tensorflow, _is_true_colour_bmp(contents)),
      ["image_bytes: not a PNG, JPEG, GIF or 24/32-bit BMP file (TIFF and "
       "palette BMP are not decoded here; convert them to PNG)"])

  def with_tensorflow():
    # channels=3 for every format: BMP and GIF refuse channels=1.
    image = tf.io.decode_image(contents, channels=3, dtype=tf.float32,
                               expand_animations=False)
    if channels == 1:
      image = tf.image.rgb_to_grayscale(image)
    return tf.ensure_shape(image, [None, None, channels])

  def as_pillow():
    image = tf.cast(tf.io.decode_bmp(contents, channels=3), tf.int32)
    if channels == 1:
      image = (tf.reduce_sum(image * tf.constant(_PILLOW_LUMA), axis=-1,
                             keepdims=True) + 0x8000) // 0x10000
    return tf.ensure_shape(tf.cast(image, tf.float32) / 255.0,
                           [None, None, channels])

  with tf.control_dependencies([check]):
    image = tf.cond(by_tensorflow, with_tensorflow, as_pillow)
  image = tf.image.resize(image, (height, width), method="bilinear",
                          antialias=True)
  image = tf.clip_by_value(image, 0.0, 1.0)
  return tf.ensure_shape(image, [height, width, channels])


def _tf_variable(variable) -> tf.Variable:
  """The tf.Variable holding a Keras variable's value (or `variable`)."""
  value = getattr(variable, "value", variable)
  if not isinstance(value, tf.Variable):
    raise TypeError(f"{getattr(variable, 'path', variable)}: not backed by "
                    f"a tf.Variable ({type(value).__name__})")
  return value


class _Classifier(tf.Module):
  """What the SavedModel holds: the networks and their functions."""

  def __init__(self, backbone: keras.Model, head: Head,
               image_shape: Sequence[int], class_names: Sequence[str],
               step: int, class_counts: Sequence[int] | None = None):
    super().__init__(name="cfal_classifier")
    # The backbone's own tf.Variables are what the SavedModel tracks, not
    # the Keras model: Keras 3 saves each of its variables as a copy that
    # only tf.saved_model.load restores, so TensorFlow Serving and
    # `saved_model_cli run` (the TF1 loader) found the variables the
    # functions read uninitialised. A plain closure keeps the model itself
    # out of the object graph.
    self.backbone_variables = [_tf_variable(v) for v in backbone.variables]
    self._backbone = lambda images: backbone(images, training=False)
    self.head = head
    self.image_shape = tuple(int(s) for s in image_shape)
    # The training step of the exported weights, so evaluations of the
    # export line up with the checkpoints' in TensorBoard.
    self.step = tf.Variable(int(step), dtype=tf.int64, trainable=False,
                            name="step")
    self.class_names = tf.Variable(list(class_names), trainable=False,
                                   name="class_names")
    # The training split's examples per class: the model's class priors
    # (for post-hoc logit adjustment), int64 [num_classes].
    if class_counts is not None:
      self.class_counts = tf.Variable(
          [int(c) for c in class_counts], dtype=tf.int64, trainable=False,
          name="class_counts")
    # "cosine" or "euclidean": how the head compares embeddings, for
    # retrieval metrics on the exported model.
    self.embedding_metric = tf.Variable(head.embedding_metric,
                                        trainable=False,
                                        name="embedding_metric")
    spec = tf.TensorSpec([None, *self.image_shape], tf.float32,
                         name="images")
    self.embed = tf.function(self._embed, input_signature=[spec],
                             autograph=False)
    self.classify = tf.function(self._classify, input_signature=[spec],
                                autograph=False)
    self.decodes_files = (len(self.image_shape) == 3
                          and self.image_shape[-1] in (1, 3))
    if self.decodes_files:
      files = tf.TensorSpec([None], tf.string, name="image_bytes")
      self.decode_images = tf.function(
          self._decode_images, input_signature=[files], autograph=False)
      self.classify_image_bytes = tf.function(
          self._classify_image_bytes, input_signature=[files],
          autograph=False)

  def signature_map(self) -> dict:
    """The SavedModel's signatures by name."""
    signatures = {"serving_default": self.classify,
                  "classify": self.classify, "embed": self.embed}
    if self.decodes_files:
      signatures["classify_image_bytes"] = self.classify_image_bytes
    return signatures

  def _embed(self, images):
    """images float32 [N, H, W, C] in [0, 1] -> {"embeddings": [N, D]}."""
    return {"embeddings": tf.cast(self._backbone(images), tf.float32)}

  def _classify(self, images):
    """images -> class ids, their names, the head's scores, embeddings."""
    embeddings = self._embed(images)["embeddings"]
    class_ids = self.head.predict(embeddings)
    return {"class_ids": class_ids,
            "class_names": tf.gather(self.class_names, class_ids),
            "scores": self.head(embeddings),
            "embeddings": embeddings}

  def _decode_images(self, image_bytes):
    """image_bytes string [N] -> images float32 [N, H, W, C] in [0, 1]."""
    height, width, channels = self.image_shape
    return tf.map_fn(
        lambda contents: decode_image_bytes(
            contents, height=height, width=width, channels=channels),
        image_bytes,
        fn_output_signature=tf.TensorSpec(self.image_shape, tf.float32))

  def _classify_image_bytes(self, image_bytes):
    """image_bytes string [N] (file contents) -> what `classify` gives."""
    return self._classify(self._decode_images(image_bytes))


def export_saved_model(path: str | os.PathLike, *, backbone: keras.Model,
                       head: Head, image_shape: Sequence[int],
                       class_names: Sequence[str],
                       step: int = 0,
                       class_counts: Sequence[int] | None = None
                       ) -> pathlib.Path:
  """Writes the SavedModel into a temporary folder, then swaps it in.

  A kill at any moment leaves a complete model at `path` or at
  `path.old` (between the swap's two renames); the next export puts the
  old one back first, so readers only ever see complete models.

  The signatures are `serving_default` and `classify` (float images ->
  class_ids, class_names, scores, embeddings), `embed` (float images ->
  embeddings) and, for 1- or 3-channel models, `classify_image_bytes`
  (encoded PNG/JPEG/GIF/BMP files, input `image_bytes` -> what classify
  gives); the module docstring shows `saved_model_cli` and TensorFlow
  Serving calls. Loading needs only TensorFlow:
  `m = tf.saved_model.load(path)`, then `m.signatures["classify"](images=x)`,
  `m.signatures["classify_image_bytes"](image_bytes=tf.constant([png]))`,
  `m.embed(x)` or `m.decode_images(files)` (the float images the bytes
  signature classifies).

  Args:
    path: The SavedModel's folder.
    backbone: Images -> embeddings.
    head: Embeddings -> scores and class ids.
    image_shape: `(height, width, channels)` the backbone takes; also
      what the bytes signature decodes and resizes files to.
    class_names: Name of each class id.
    step: The training step of the weights.
    class_counts: The training split's examples per class, kept as the
      loaded model's `class_counts` (int64 [num_classes]), so the export
      carries its class priors; None for none.

  Returns:
    `path`.
  """
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  old = path.with_name(path.name + ".old")
  if old.exists() and not path.exists():
    old.rename(path)   # a previous swap was killed half-way
  shutil.rmtree(tmp, ignore_errors=True)
  module = _Classifier(backbone, head, image_shape, class_names, step,
                       class_counts)
  tf.saved_model.save(module, str(tmp), signatures=module.signature_map())
  shutil.rmtree(old, ignore_errors=True)
  if path.exists():
    path.rename(old)
  tmp.rename(path)
  shutil.rmtree(old, ignore_errors=True)
  return path
