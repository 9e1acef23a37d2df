"""Runs a real training run and makes it fail at one chosen point.

    python tests/support/fault_driver.py CONFIG_JSON POINT

CONFIG_JSON is a `TrainConfig.to_json()` file. POINT is `name:N`, the N-th
time the run gets there (1-based):

  step:N              SIGKILL while the N-th compiled call of steps runs
  checkpoint-data:N   SIGKILL after the N-th save wrote its shards, before
                      TensorFlow merged them into the checkpoint files
  checkpoint-state:N  SIGKILL after the N-th save wrote its files, before
                      the `checkpoint` state file names them
  eval:N              SIGKILL as the N-th validation starts
  best:N              SIGKILL right after the N-th best-model save
  export-save:N       SIGKILL after the N-th export wrote its SavedModel,
                      before it was moved into place
  export-swap:N       SIGKILL between the two renames of the N-th export swap
  file-limit:N        after the N-th save, cap file size at 64 KiB
                      (RLIMIT_FSIZE), so later writes fail like on a full disk
  none                no fault

Everything else is the library's own code; the wrappers only count calls
and then call through. The process exits like train.py (`cfal.cli.run`).
"""

from __future__ import annotations

import os
import pathlib
import resource
import signal
import sys
import threading
import time


def _kill() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def _counting(fn, n: int, before=None, after=None):
  """Wraps `fn`; on its n-th call runs `before()` / `after()` around it."""
  calls = [0]

  def wrapper(*args, **kwargs):
    calls[0] += 1
    hit = calls[0] == n
    if hit and before:
      before(*args, **kwargs)
    result = fn(*args, **kwargs)
    if hit and after:
      after(*args, **kwargs)
    return result
  return wrapper


def install(point: str) -> None:
  """Arms the fault named by `point`."""
  if point == "none":
    return
  name, n = point.split(":")
  n = int(n)
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from tensorflow.python.checkpoint import checkpoint_management
  from tensorflow.python.ops import gen_io_ops
  from cfal.training import evaluator, steps
  if name == "step":
    durations = []
    original = steps.Steps.__init__

    def init(self, *args, **kwargs):
      original(self, *args, **kwargs)
      loop_for = self.loop_for

      def timed_loop_for(step):
        call = loop_for(step)

        def timed(*a, **k):
          began = time.perf_counter()
          if len(durations) == n - 1:
            # Half-way through this call, judged by the last one's length.
            delay = 0.5 * (durations[-1] if durations else 1.0)
            threading.Timer(delay, _kill).start()
          result = call(*a, **k)
          durations.append(time.perf_counter() - began)
          return result
        return timed
      self.loop_for = timed_loop_for
    steps.Steps.__init__ = init
  elif name == "checkpoint-data":
    gen_io_ops.merge_v2_checkpoints = _counting(
        gen_io_ops.merge_v2_checkpoints, n, before=lambda *a, **k: _kill())
  elif name == "checkpoint-state":
    checkpoint_management.update_checkpoint_state_internal = _counting(
        checkpoint_management.update_checkpoint_state_internal, n,
        before=lambda *a, **k: _kill())
  elif name == "eval":
    evaluator.Evaluator.evaluate = _counting(evaluator.Evaluator.evaluate, n,
                                             before=lambda *a, **k: _kill())
  elif name == "best":
    save = tf.train.CheckpointManager.save
    count = [0]

    def best_save(self, *args, **kwargs):
      path = save(self, *args, **kwargs)
      if pathlib.Path(self.directory).name == "best":
        count[0] += 1
        if count[0] == n:
          _kill()
      return path
    tf.train.CheckpointManager.save = best_save
  elif name == "export-save":
    tf.saved_model.save = _counting(tf.saved_model.save, n,
                                    after=lambda *a, **k: _kill())
  elif name == "export-swap":
    rename = pathlib.Path.rename
    count = [0]

    def swap_rename(self, target):
      if str(target).endswith(".old"):
        count[0] += 1
        result = rename(self, target)
        if count[0] == n:
          _kill()
        return result
      return rename(self, target)
    pathlib.Path.rename = swap_rename
  elif name == "file-limit":
    def cap(*args, **kwargs):
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG, not a crash
      resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
    tf.train.CheckpointManager.save = _counting(
        tf.train.CheckpointManager.save, n, after=cap)
  else:
    raise SystemExit(f"unknown fault point {point!r}")


def main(argv: list[str]) -> int:
  config_path, point = argv[1], argv[2]
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  from cfal import cli  # pylint: disable=import-outside-toplevel

  def body() -> None:
    # Imported here, after cli.run has imported TensorFlow quietly.
    # pylint: disable=import-outside-toplevel
    from cfal.training.config import TrainConfig
    from cfal.training.runner import train
    config = TrainConfig.from_json(pathlib.Path(config_path).read_text())
    install(point)
    train(config, echo=lambda m: print(m, flush=True))

  return cli.run("train.py", ["train.py"], body, verbose=False)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
