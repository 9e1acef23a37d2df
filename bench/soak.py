"""Soak: kill a training run with SIGKILL over and over; it must not notice.

One short `train.py --deterministic` run on Fashion-MNIST is started with
the same command again and again and killed at a random moment each time:
during start-up, during steps, checkpoints, validation or the export (after
the run has finished, a rerun evaluates and exports again, so later kills
land there). After the last kill the command runs to the end. Its latest
checkpoint must equal, bit for bit, that of the same command run once
without interruption, and so must its final validation line and best
checkpoint.

    .venv/bin/python bench/soak.py                 # 20 cycles, ~5 minutes
    .venv/bin/python bench/soak.py --cycles 5 --seed 1

Writes bench/results/soak.json; tests/test_reliability.py runs it (slow).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=wrong-import-position

TRAIN_STEPS = 240
TRAIN_FLAGS = ("--deterministic", f"--train_steps={TRAIN_STEPS}",
               "--steps_per_loop=5",
               "--checkpoint_every=10", "--eval_every=40", "--batch_size=32",
               "--embedding_dim=16", "--validation_split=0.01",
               "--projector_points=100")


def command(logdir: pathlib.Path) -> list[str]:
  return [sys.executable, str(common.ROOT / "train.py"),
          f"--logdir={logdir}", *TRAIN_FLAGS]


def run_to_end(logdir: pathlib.Path) -> list[str]:
  done = subprocess.run(command(logdir), capture_output=True, text=True,
                        cwd=common.ROOT, check=False,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  if done.returncode != 0:
    raise RuntimeError(f"train.py exited {done.returncode}: "
                       f"{done.stderr.strip()[-500:]}")
  return done.stdout.splitlines()


def run_and_kill(logdir: pathlib.Path, rng: random.Random) -> dict:
  """Starts the command and SIGKILLs it at a random moment."""
  process = subprocess.Popen(command(logdir), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             cwd=common.ROOT,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  lines: list[str] = []
  started, finished = threading.Event(), threading.Event()

  def read() -> None:
    for line in process.stdout:
      lines.append(line.rstrip())
      # Training is under way once steps run (after the first compiled
      # call); a finished run's rerun only evaluates and exports again,
      # which takes a few seconds from its "Resuming" line.
      if line.startswith("Resuming") and f"at step {TRAIN_STEPS}." in line:
        finished.set()
        started.set()
      if line.startswith("step "):
        started.set()
    started.set()   # exited before a kill
  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  if rng.random() < 0.2:
    when = "start-up"
    time.sleep(rng.uniform(0.5, 6.0))
  else:
    started.wait(timeout=600)
    if finished.is_set():
      when = "evaluation/export"
      time.sleep(rng.uniform(0.0, 2.0))
    else:
      when = "training"
      time.sleep(rng.uniform(0.0, 3.0))
  process.send_signal(signal.SIGKILL)
  process.wait()
  reader.join(timeout=10)
  steps = [l for l in lines if l.startswith("step ")]
  return {"killed_during": when, "exit": process.returncode,
          "resumed_from": next((l for l in lines if l.startswith("Resuming")),
                               "fresh start"),
          "last_line": lines[-1] if lines else "",
          "last_step": steps[-1].split()[1] if steps else None}


def checkpoint_arrays(logdir: pathlib.Path) -> dict[str, np.ndarray]:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  reader = tf.train.load_checkpoint(
      tf.train.latest_checkpoint(str(logdir / "checkpoints")))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if "save_counter" not in name and not name.startswith("_CHECK")}


def best_checkpoint(logdir: pathlib.Path) -> str:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return pathlib.Path(tf.train.latest_checkpoint(
      str(logdir / "checkpoints" / "best"))).name


def soak(workdir: pathlib.Path, cycles: int, seed: int) -> dict:
  """Runs the soak in `workdir`; returns what happened and whether it held."""
  rng = random.Random(seed)
  began = time.perf_counter()
  straight_lines = run_to_end(workdir / "straight")
  kills = []
  for cycle in range(cycles):
    kills.append(run_and_kill(workdir / "soaked", rng))
    print(f"cycle {cycle + 1}/{cycles}: killed during "
          f"{kills[-1]['killed_during']}, {kills[-1]['resumed_from']}, "
          f"last line: {kills[-1]['last_line'][:70]}", flush=True)
  final_lines = run_to_end(workdir / "soaked")
  a, b = checkpoint_arrays(workdir / "straight"), checkpoint_arrays(
      workdir / "soaked")
  differing = sorted(k for k in a if k not in b or not np.array_equal(
      a[k], b[k]))
  last_validation = lambda ls: [l for l in ls if l.startswith(  # noqa: E731
      f"validation at step {TRAIN_STEPS}")][-1]
  same_validation = (last_validation(straight_lines)
                     == last_validation(final_lines))
  same_best = best_checkpoint(workdir / "straight") == best_checkpoint(
      workdir / "soaked")
  return {"cycles": cycles, "seed": seed, "kills": kills,
          "variables": len(a), "differing_variables": differing,
          "same_validation": same_validation,
          "validation": last_validation(final_lines),
          "same_best_checkpoint": same_best,
          "identical": not differing and same_validation and same_best,
          "seconds": time.perf_counter() - began}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cycles", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(prefix="cfal-soak-") as tmp:
    result = soak(pathlib.Path(tmp), args.cycles, args.seed)
  during = [k["killed_during"] for k in result["kills"]]
  sigkills = sum(k["exit"] == -signal.SIGKILL for k in result["kills"])
  print(f"\n{result['cycles']} cycles, {sigkills} ended by SIGKILL (the "
        f"rest finished first), killed during: "
        f"{during.count('start-up')} start-up, {during.count('training')} "
        f"training, {during.count('evaluation/export')} the final "
        f"evaluation/export; then one "
        f"run to the end: {result['variables']} checkpointed variables, "
        f"{len(result['differing_variables'])} differ from the uninterrupted "
        f"run; same final validation: {result['same_validation']}; same best "
        f"checkpoint: {result['same_best_checkpoint']}. "
        f"({result['seconds']:.0f} s)")
  table = common.markdown_table(
      ["cycle", "killed during", "exit", "resumed from", "last step printed"],
      [[i + 1, k["killed_during"],
        "SIGKILL" if k["exit"] == -signal.SIGKILL else k["exit"],
        k["resumed_from"].replace("Resuming ", ""), k["last_step"] or "-"]
       for i, k in enumerate(result["kills"])], align="rllll")
  common.write_result(
      "soak", command=f".venv/bin/python bench/soak.py --cycles "
      f"{args.cycles} --seed {args.seed}",
      tables=[{"title": "Kill/resume cycles", "markdown": table}],
      findings=[f"{result['cycles']} kill/resume cycles end "
                f"{'bit-identical to' if result['identical'] else 'DIFFERENT'}"
                f"{'' if result['identical'] else ' from'}"
                f" one uninterrupted run ({result['variables']} variables, "
                f"final validation and best checkpoint compared)."],
      results=result, seconds=result["seconds"])
  return 0 if result["identical"] else 1


if __name__ == "__main__":
  sys.exit(main())
