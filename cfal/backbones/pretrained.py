"""Pretrained weights for a built backbone: ImageNet, a file, or a cfal run.

`load_pretrained(backbone, source)` fills a backbone that
`cfal.backbones.build_backbone` made, in place, from one of the sources
`cfal.backbones.sources` describes:

- "imagenet": Keras's published ImageNet file for the network, fetched
  once into `$KERAS_HOME/models/` with `keras.utils.get_file` (the file,
  folder and digest `keras.applications` uses with `weights="imagenet"`,
  so a file Keras already downloaded is reused), loaded into the Keras
  application inside the backbone;
- a Keras Applications `.h5` file (what "imagenet" downloads, copied by
  hand): loaded the same way, layer by layer in Keras's order;
- a Keras 3 `.weights.h5` file: of a whole cfal backbone
  (`backbone.save_weights`), else of its Keras application alone;
- a cfal run directory or checkpoint prefix: the `backbone` of that run's
  best checkpoint (else its latest), read with
  `tf.train.Checkpoint(backbone=...)`; nothing else of the run (head,
  optimizer, step) is touched.

ImageNet weights cover the application only: the input preprocessing has
no weights, and the embedding layer keeps its initial values (ImageNet has
no such layer). A source that does not fit the backbone leaves it as it
was and raises one line: `UsageError` (exit 2 in the commands) for a source
that does not exist or holds another network, `cfal.data.DataError` (exit
1) for a download that failed or a file that cannot be read.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import socket
import warnings
from typing import Iterator

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from cfal.backbones import applications, sources
from cfal.data.errors import DataError
from cfal.errors import UsageError

# Seconds a connection to the weights server may stay silent (connect or
# read) before the download fails, so that a network that drops packets
# cannot hang a run.
DOWNLOAD_TIMEOUT = 60.0


def load_pretrained(backbone: keras.Model, source: str | os.PathLike, *,
                    timeout: float = DOWNLOAD_TIMEOUT) -> str:
  """Loads pretrained weights from `source` into `backbone`, in place.

  Call it after building the backbone (inside the strategy scope or not)
  and before training starts; variables keep their distribution.

  Args:
    backbone: a backbone from `cfal.backbones.build_backbone`; its name is
      its registry name ("resnet50", "seed_cnn", ...).
    source: "imagenet", a weights file (Keras Applications `.h5`, Keras 3
      `.weights.h5`), a cfal run directory or a checkpoint prefix.
    timeout: seconds without network traffic after which an ImageNet
      download gives up.

  Returns:
    One line saying what was loaded from where, for the run's log.

  Raises:
    UsageError: a source that does not exist, or holds another network
      (other backbone, embedding size or architecture); one line.
    DataError: the ImageNet file could not be downloaded (the line names
      the file and the folder to copy it into), or a file could not be
      read; one line.
  """
  name = backbone.name
  kind = sources.check_source(name, source)
  source = os.fspath(source)
  if kind == "imagenet":
    path = download_weights(sources.IMAGENET_WEIGHTS[name], timeout=timeout)
    _load_application_h5(backbone, path)
    return (f"{name}: ImageNet weights from {path} in its Keras application "
            f"(the embedding layer keeps its initial weights).")
  if kind == "keras_h5":
    _load_application_h5(backbone, source)
    return (f"{name}: Keras Applications weights from {source} in its Keras "
            f"application (the embedding layer keeps its initial weights).")
  if kind == "weights_h5":
    part = _load_weights_h5(backbone, source)
    return f"{name}: weights of {part} from {source}."
  prefix = _checkpoint_prefix(source, kind)
  _load_checkpoint(backbone, prefix, source)
  return f"{name}: the backbone of {source}, restored from {prefix}."


def download_weights(weights: sources.WeightsFile, *,
                     timeout: float = DOWNLOAD_TIMEOUT) -> str:
  """The path of `weights` in the Keras cache, downloading it if missing.

  `keras.utils.get_file` fetches the file into `sources.keras_models_dir()`
  and checks its digest, as `keras.applications` does; a file already
  there is used if its digest matches. Every network operation (connect,
  each read) gives up after `timeout` silent seconds.

  Raises:
    DataError: one line naming the file, its URL, why it failed and the
      folder to copy it into by hand; also for a cached file whose digest
      differs (left in place: the line says to delete or replace it).
  """
  folder = sources.keras_models_dir()
  target = folder / weights.name
  if target.is_file():
    if weights.matches(target):
      return str(target)
    raise DataError(f"{target} is not Keras's {weights.name} (its digest "
                    f"differs: an interrupted download or another file): "
                    f"delete it to download it again, or replace it with the "
                    f"file from {weights.origin}.")
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise DataError(f"Cannot create the Keras cache folder {folder} "
                    f"({error.strerror}) for {weights.name}: set KERAS_HOME "
                    f"to a writable folder.") from None
  try:
    with _socket_timeout(timeout):
      # An absolute cache_subdir is used as it is: Keras falls back to
      # /tmp/.keras only for an unwritable cache_dir, which we never pass.
      return keras.utils.get_file(weights.name, weights.origin,
                                  cache_subdir=str(folder),
                                  file_hash=weights.file_hash)
  except Exception as error:  # pylint: disable=broad-except
    # get_file raises a bare Exception for URL errors, ValueError for a
    # digest mismatch, and socket timeouts as they are.
    reason = " ".join(str(error).split()) or type(error).__name__
    if " -- " in reason:
      reason = reason.rsplit(" -- ", 1)[1]
    raise DataError(f"Could not download {weights.name} from "
                    f"{weights.origin} ({reason}): download it elsewhere and "
                    f"copy it into {folder}/ (Keras's cache, "
                    f"$KERAS_HOME/models), or pass the file's path as the "
                    f"pretrained source.") from None


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
  """Sockets opened in the block time out after `seconds` of silence.

  `keras.utils.get_file` opens its URL without a timeout, so it inherits
  the process's default; this sets the default for the block only.
  """
  previous = socket.getdefaulttimeout()
  socket.setdefaulttimeout(seconds)
  try:
    yield
  finally:
    socket.setdefaulttimeout(previous)


@contextlib.contextmanager
def _restored_on_failure(model: keras.Model) -> Iterator[None]:
  """Puts every variable of `model` back if the block raises, so a load
  that fails half-way leaves no mix of old and new weights."""
  saved = [(variable, variable.numpy()) for variable in model.variables]
  try:
    yield
  except BaseException:
    for variable, value in saved:
      variable.assign(value)
    raise


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0].rstrip(".:") if text else type(error).__name__


def _application(backbone: keras.Model, source: str) -> keras.Model:
  """The Keras application inside `backbone`, or a UsageError."""
  if backbone.name not in applications.APPLICATIONS:
    raise UsageError(f"{source} is a Keras Applications weights file; "
                     f"--backbone={backbone.name} is not a Keras application "
                     f"(those are {', '.join(applications.APPLICATIONS)}).")
  return applications.application_body(backbone)


def _load_application_h5(backbone: keras.Model, path: str) -> None:
  """A Keras Applications `.h5` file into the backbone's application.

  Keras loads these files by position: the i-th layer with weights in the
  file goes to the i-th layer with weights in the model.
  """
  body = _application(backbone, path)
  expected = sources.IMAGENET_WEIGHTS[backbone.name].name
  try:
    with _restored_on_failure(body):
      body.load_weights(path)
  except ValueError as error:
    raise UsageError(f"{path} does not hold {backbone.name}'s weights "
                     f"({_first_line(error)}); Keras's file for it is "
                     f"{expected}.") from None
  except OSError as error:
    raise DataError(f"{path} is not a readable HDF5 weights file "
                    f"({_first_line(error)}).") from None


def _load_weights_h5(backbone: keras.Model, path: str) -> str:
  """A Keras 3 `.weights.h5` file: of the whole backbone, else of its
  Keras application. Returns which of the two it was."""
  targets = [("the whole backbone", backbone)]
  if backbone.name in applications.APPLICATIONS:
    targets.append(("its Keras application",
                    applications.application_body(backbone)))
  errors = []
  for part, target in targets:
    try:
      with _restored_on_failure(target), warnings.catch_warnings():
        # Keras warns about every layer it cannot match before it raises.
        warnings.simplefilter("ignore")
        target.load_weights(path)
      return part
    except ValueError as error:
      errors.append(_first_line(error))
    except OSError as error:
      raise DataError(f"{path} is not a readable Keras weights file "
                      f"({_first_line(error)}).") from None
  raise UsageError(f"{path} holds weights of another network than this "
                   f"{backbone.name} (loading it into "
                   f"{' or '.join(part for part, _ in targets)}: "
                   f"{errors[0]}).")


def _checkpoint_prefix(source: str, kind: str) -> str:
  """The checkpoint a run directory (best, else latest) or prefix names."""
  if kind == "checkpoint":
    return source[:-len(".index")] if source.endswith(".index") else source
  for folder in sources.run_checkpoint_folders(source):
    prefix = tf.train.latest_checkpoint(str(folder))
    if prefix:
      return prefix
  raise UsageError(f"{source} has no complete checkpoint: the checkpoint "
                   f"its checkpoints/ state files name is missing.")


def _run_config(prefix: str) -> dict:
  """The `model` part of the config.json of the run that holds `prefix`
  (`<run>/checkpoints/[best/]ckpt-N`), or {} if there is none."""
  for folder in list(pathlib.Path(prefix).parents)[:3]:
    path = folder / "config.json"
    if path.is_file():
      try:
        return dict(json.loads(path.read_text()).get("model", {}))
      except (ValueError, OSError, AttributeError, TypeError):
        return {}
  return {}


def _recorded_model(reader, prefix: str) -> tuple[str | None, int | None]:
  """(backbone, embedding_dim) the checkpoint records in `model_identity`
  (cfal writes "head=... backbone=... embedding_dim=..."), else its run's
  config.json, else (None, None)."""
  key = "model_identity/.ATTRIBUTES/VARIABLE_VALUE"
  if reader.has_tensor(key):
    identity = reader.get_tensor(key)
    identity = (identity.decode() if isinstance(identity, bytes)
                else str(identity))
    backbone = re.search(r"backbone=(\S+)", identity)
    dim = re.search(r"embedding_dim=(\d+)", identity)
    if backbone and dim:
      return backbone.group(1), int(dim.group(1))
  model = _run_config(prefix)
  try:
    return model["backbone"], int(model["embedding_dim"])
  except (KeyError, TypeError, ValueError):
    return None, None


def _checkpoint_variable_count(reader) -> int | None:
  """Variables under the checkpoint's `backbone` object, or None if it has
  none (the object graph links each variable once, however many objects
  refer to it)."""
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  roots = [child.node_id for child in graph.nodes[0].children
           if child.local_name == "backbone"]
  if not roots:
    return None
  seen, stack, count = set(), list(roots), 0
  while stack:
    node_id = stack.pop()
    if node_id in seen:
      continue
    seen.add(node_id)
    node = graph.nodes[node_id]
    count += any(a.name == "VARIABLE_VALUE" for a in node.attributes)
    stack.extend(child.node_id for child in node.children)
  return count


def _variable_count(backbone: keras.Model) -> int:
  """Variables a checkpoint of `backbone` holds (its object graph's)."""
  return sum(isinstance(obj, (keras.Variable, tf.Variable))
             for obj in tf.train.TrackableView(backbone).descendants())


def _load_checkpoint(backbone: keras.Model, prefix: str, source: str) -> None:
  """The `backbone` object of the cfal checkpoint `prefix` into `backbone`,
  after checking it is the same network."""
  name = backbone.name
  dim = backbone.output_shape[-1]
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as error:
    raise DataError(f"{prefix} is not a readable checkpoint "
                    f"({_first_line(error)}).") from None
  other, other_dim = _recorded_model(reader, prefix)
  if other is not None and (other, other_dim) != (name, dim):
    raise UsageError(f"{source} holds a {other} backbone with "
                     f"embedding_dim={other_dim}, not {name} with "
                     f"embedding_dim={dim}: transfer needs the same backbone "
                     f"and embedding size.")
  saved = _checkpoint_variable_count(reader)
  if saved is None:
    raise UsageError(f"{prefix} holds no backbone: it is not a cfal "
                     f"checkpoint.")
  options = _run_config(prefix).get("backbone_args") or {}
  built_otherwise = (f"{source} holds a {other or 'backbone'} built with "
                     f"other options (its backbone_args: {options or 'none'})"
                     f": build {name} the same way to transfer its weights")
  if saved != _variable_count(backbone):
    raise UsageError(f"{built_otherwise} ({saved} variables, this one has "
                     f"{_variable_count(backbone)}).")
  try:
    with _restored_on_failure(backbone):
      status = tf.train.Checkpoint(backbone=backbone).read(prefix)
      status.expect_partial()
      status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as error:
    raise UsageError(f"{built_otherwise} ({_first_line(error)}).") from None
