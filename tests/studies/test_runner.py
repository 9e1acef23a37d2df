"""The study runner trains and evaluates through train.py and eval.py, keeps
what finished and skips it on rerun."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from studies import runner
from support.training import ROOT

# A few steps on real Fashion-MNIST: the runner's mechanics, not a result.
TINY = {"dataset": "fashion_mnist", "validation_split": 0.01,
        "train_steps": 4, "batch_size": 16, "steps_per_loop": 2,
        "embedding_dim": 8, "head": "softmax", "projector_points": 50}


def _runner(tmp_path, lines):
  return runner.Runner(python=sys.executable, runs_dir=tmp_path / "runs",
                       results_dir=tmp_path / "results", echo=lines.append)


def test_a_run_is_trained_evaluated_kept_and_then_skipped(tmp_path):
  lines = []
  study = _runner(tmp_path, lines)
  run = runner.Run("tiny", flags=TINY, keep=("embeddings.png",))
  record = study.execute("exp", run, seed=3)
  kept = tmp_path / "results" / "exp" / "tiny" / "seed-3"
  report = json.loads((kept / "test.json").read_text())
  assert report["split"] == "test" and report["num_samples"] == 10000
  assert (kept / "embeddings.png").read_bytes().startswith(b"\x89PNG")
  assert json.loads((kept / "result.json").read_text()) == record
  assert record["train_command"][1:4] == ["train.py", "--dataset=fashion_mnist",
                                          "--validation_split=0.01"]
  assert "--seed=3" in record["train_command"]
  assert record["train_seconds"] > 0 and not record["resumed"]
  # The run directory holds the training and its logs.
  logdir = tmp_path / "runs" / "exp" / "tiny" / "seed-3"
  assert (logdir / "config.json").exists()
  assert "Training" in (logdir / "study-train.log").read_text()

  # Rerun: nothing trains (the kept record comes back as it was).
  (logdir / "config.json").unlink()
  lines.clear()
  assert study.execute("exp", run, seed=3) == record
  assert not (logdir / "config.json").exists() and not lines

  # Another command for the same cell is refused, not silently reused.
  changed = runner.Run("tiny", flags={**TINY, "batch_size": 8})
  with pytest.raises(runner.StaleResult, match="another command"):
    study.execute("exp", changed, seed=3)


def test_a_failing_run_names_itself_and_keeps_nothing(tmp_path):
  study = _runner(tmp_path, [])
  bad = runner.Run("bad", flags={**TINY, "backbone": "nope"})
  with pytest.raises(RuntimeError, match=r"exp/bad/seed-0: train.py exited 2"):
    study.execute("exp", bad, seed=0)
  assert not (tmp_path / "results" / "exp" / "bad").exists()


def test_every_experiment_loads_and_names_existing_flagfiles():
  from studies import experiments  # pylint: disable=import-outside-toplevel
  assert experiments.names()
  for name in experiments.names():
    experiment = experiments.load(name)
    assert experiment.name == name and experiment.runs
    assert len({r.name for r in experiment.runs}) == len(experiment.runs)
    for run in experiment.runs:
      for flagfile in run.flagfiles:
        assert (ROOT / flagfile).is_file(), flagfile


@pytest.mark.slow
def test_tuning_picks_the_best_validation_point_and_trains_with_it(tmp_path):
  lines = []
  study = _runner(tmp_path, lines)
  grid = runner.Grid({"learning_rate": (1e-9, 3e-3)}, metric="accuracy")
  run = runner.Run("tuned", flags={**TINY, "train_steps": 30}, grid=grid)
  # Another cell reusing the choice (as the ratio-10 runs of experiment 3).
  reused = runner.Run("reused", flags={**TINY, "train_steps": 10},
                      tuned_like="tuned")
  experiment = runner.Experiment("exp", "tiny", (run, reused), seeds=(1,))
  records = study.run_experiment(experiment)
  # A learning rate of 1e-9 cannot learn in 30 steps; 3e-3 does.
  assert [r["flags"]["learning_rate"] for r in records] == [3e-3, 3e-3]
  assert [r["run"] for r in records] == ["tuned", "reused"]
  assert not (tmp_path / "results" / "exp" / "reused" / "tune").exists()
  assert any("tuned on validation accuracy: learning_rate=0.003" in line
             for line in lines)
  tune = tmp_path / "results" / "exp" / "tuned" / "tune"
  for point in ("learning_rate=1e-09", "learning_rate=0.003"):
    report = json.loads((tune / point / "seed-0" / "validation.json")
                        .read_text())
    assert report["split"] == "validation"


def test_a_run_later_runs_need_trains_again_when_its_directory_is_gone(
    tmp_path):
  lines = []
  study = _runner(tmp_path, lines)
  pretrain = runner.Run("pretrain", flags=TINY, seeds=(5,),
                        run_dir_needed=True,
                        evals={"validation": ("--split=validation",)})
  experiment = runner.Experiment("exp", "tiny", (pretrain,), seeds=(0, 1))
  assert experiment.seeds_of(pretrain, asked=(2, 3)) == (5,)
  assert experiment.seeds_of(runner.Run("x"), asked=(2,)) == (2,)
  first = study.run_experiment(experiment)
  assert [r["seed"] for r in first] == [5]
  logdir = tmp_path / "runs" / "exp" / "pretrain" / "seed-5"
  assert study.run_experiment(experiment) == first     # kept: skipped
  shutil.rmtree(logdir)                                # a fresh clone
  again = study.run_experiment(experiment)
  assert (logdir / "config.json").exists()
  assert again[0]["finished"] >= first[0]["finished"]
  assert any("need its run directory, which is gone" in l for l in lines)


def test_device_flags_go_to_every_command_and_kept_results_still_count(
    tmp_path):
  lines = []
  on_cpu = _runner(tmp_path, lines)
  on_gpus = runner.Runner(python=sys.executable, runs_dir=tmp_path / "runs",
                          results_dir=tmp_path / "results", echo=lines.append,
                          device_flags=("--gpus=4",))
  run = runner.Run("tiny", flags=TINY)
  logdir = tmp_path / "runs" / "exp" / "tiny" / "seed-0"
  train = on_gpus.train_command(run, 0, logdir, {})
  assert train[-1] == "--gpus=4" and train[:-1] == on_cpu.train_command(
      run, 0, logdir, {})
  assert on_gpus.eval_command(logdir, "test", ("--split=test",))[-1] == (
      "--gpus=4")
  # A result kept from a CPU run is the same experiment: skipped quietly.
  kept = tmp_path / "results" / "exp" / "tiny" / "seed-0"
  kept.mkdir(parents=True)
  record = {"train_command": runner._shown(on_cpu.train_command(  # pylint: disable=protected-access
      run, 0, logdir, {}))}
  (kept / "result.json").write_text(json.dumps(record))
  assert on_gpus.execute("exp", run, 0) == record and not lines
  # Another learning rate is not: refused, or said on a dry run.
  other = runner.Run("tiny", flags={**TINY, "learning_rate": 1})
  with pytest.raises(runner.StaleResult, match="delete .*seed-0 to redo"):
    on_gpus.execute("exp", other, 0)
  dry = runner.Runner(python=sys.executable, runs_dir=tmp_path / "runs",
                      results_dir=tmp_path / "results", echo=lines.append,
                      dry_run=True)
  assert dry.execute("exp", other, 0) == record
  assert len(lines) == 1 and "another command" in lines[0]


def test_changed_flagfile_contents_make_a_kept_result_stale(tmp_path):
  flags = tmp_path / "a.flags"
  inner = tmp_path / "b.flags"
  inner.write_text("--batch_size=16\n")
  flags.write_text(f"--flagfile={inner}\n--head=softmax\n")
  command = ["python", "train.py", f"--flagfile={flags}"]
  before = runner.flagfile_digest(command)
  assert runner.flagfile_digest(command) == before
  flags.write_text(f"# a comment\n--flagfile={inner}\n\n--head=softmax\n")
  assert runner.flagfile_digest(command) == before
  inner.write_text("--batch_size=32\n")        # an included file changed
  assert runner.flagfile_digest(command) != before
  # Kept with a digest that no longer matches: refused.
  study = _runner(tmp_path, [])
  run = runner.Run("tiny", flagfiles=(str(flags),), flags=TINY)
  logdir = tmp_path / "runs" / "exp" / "tiny" / "seed-0"
  kept = tmp_path / "results" / "exp" / "tiny" / "seed-0"
  kept.mkdir(parents=True)
  (kept / "result.json").write_text(json.dumps({
      "train_command": runner._shown(study.train_command(run, 0, logdir, {})),  # pylint: disable=protected-access
      "flagfiles_sha256": before}))
  with pytest.raises(runner.StaleResult, match="other flagfile contents"):
    study.execute("exp", run, 0)


def test_a_dry_run_keeps_a_pre_trainings_result(tmp_path):
  lines = []
  dry = runner.Runner(python=sys.executable, runs_dir=tmp_path / "runs",
                      results_dir=tmp_path / "results", echo=lines.append,
                      dry_run=True)
  pretrain = runner.Run("pretrain", flags=TINY, run_dir_needed=True)
  later = runner.Run("later", flags=TINY)
  kept = tmp_path / "results" / "exp" / "pretrain" / "seed-0"
  kept.mkdir(parents=True)
  (kept / "result.json").write_text(json.dumps({"train_command": []}))
  experiment = runner.Experiment("exp", "t", (pretrain, later), seeds=(0,))
  dry.run_experiment(experiment, only=["later"])
  assert (kept / "result.json").exists()
  # The pre-training is part of any selection: its command comes first.
  assert "gone: training it again" in lines[0]
  assert "runs/exp/pretrain/seed-0" in lines[1]
  assert "runs/exp/later/seed-0" in lines[-2]
