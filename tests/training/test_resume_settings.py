"""A run directory holds one run's settings: resume refuses others."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cfal.errors import UsageError
from cfal.training.config import ModelConfig, TrainConfig
from cfal.training.run_dir import check_run_dir
from cfal.training.runner import train
from support.training import small_config


def _with(config, *, head_args=None, **optimizer):
  model = config.model
  if head_args is not None:
    model = dataclasses.replace(model, head_args=head_args)
  return dataclasses.replace(
      config, model=model,
      optimizer=dataclasses.replace(config.optimizer, **optimizer))


def test_changed_head_and_optimizer_settings_are_refused_then_recorded(
    tmp_path):
  config = small_config(tmp_path, head="arcface",
                        head_args={"scale": 16.0, "margin": 0.3},
                        train_steps=10, steps_per_loop=5)
  train(config, echo=lambda _: None)
  saved = (tmp_path / "config.json").read_text()
  longer = dataclasses.replace(config, run=dataclasses.replace(
      config.run, train_steps=20))
  changed = _with(longer, head_args={"scale": 16.0, "margin": 0.5},
                  learning_rate=0.01)
  with pytest.raises(UsageError) as error:
    train(changed, echo=lambda _: None)
  message = str(error.value)
  assert "\n" not in message
  assert "head_args.margin 0.3 -> 0.5" in message
  assert "optimizer.learning_rate 0.002 -> 0.01" in message
  assert "train_steps" not in message   # a longer run alone is allowed
  assert "--allow_config_change" in message
  # Refused before anything was written: the run's record is untouched.
  assert (tmp_path / "config.json").read_text() == saved

  allowed = dataclasses.replace(changed, run=dataclasses.replace(
      changed.run, allow_config_change=True))
  result = train(allowed, echo=lambda _: None)
  assert result.step == 20
  record = json.loads((tmp_path / "config.json").read_text())
  assert record["model"]["head_args"]["margin"] == 0.5
  assert record["changes"] == [{"step": 10, "changed": {
      "head_args.margin": [0.3, 0.5],
      "optimizer.learning_rate": [0.002, 0.01],
      "run.train_steps": [10, 20]}}]


def test_a_longer_run_is_allowed_and_recorded(tmp_path):
  # The run's length sets the cosine decay: a resumed run with another
  # length follows another schedule from there, so config.json says so.
  config = small_config(tmp_path, train_steps=4, steps_per_loop=2)
  train(config, echo=lambda _: None)
  longer = dataclasses.replace(config, run=dataclasses.replace(
      config.run, train_steps=6))
  assert train(longer, echo=lambda _: None).step == 6
  record = json.loads((tmp_path / "config.json").read_text())
  assert record["run"]["train_steps"] == 6
  assert record["changes"] == [{"step": 4, "changed": {
      "run.train_steps": [4, 6]}}]


def test_devices_and_cadence_may_change_on_resume(tmp_path):
  config = small_config(tmp_path, train_steps=4, steps_per_loop=2,
                        checkpoint_every=2)
  train(config, echo=lambda _: None)
  moved = dataclasses.replace(config, run=dataclasses.replace(
      config.run, cpu_replicas=2, steps_per_loop=1, checkpoint_every=1,
      step_mode="eager"))
  assert train(moved, echo=lambda _: None).step == 4
  assert json.loads((tmp_path / "config.json").read_text())["changes"] == []


def test_a_new_head_option_counts_as_a_change(tmp_path):
  config = small_config(tmp_path, head="cosface", train_steps=4,
                        steps_per_loop=2)
  train(config, echo=lambda _: None)
  focal = _with(config, head_args={"gamma": 2.0})
  with pytest.raises(UsageError, match=r"head_args\.gamma unset -> 2\.0"):
    train(focal, echo=lambda _: None)


def _saved_run(logdir, config) -> None:
  """config.json and a checkpoint state naming ckpt-20, as a run leaves
  them (no training needed to check what a resume may change)."""
  (logdir / "checkpoints").mkdir(parents=True)
  (logdir / "config.json").write_text(config.to_json())
  (logdir / "checkpoints" / "checkpoint").write_text(
      'model_checkpoint_path: "ckpt-20"\n')
  (logdir / "checkpoints" / "ckpt-20.index").write_bytes(b"")


def _sampler(config, sampler, **run):
  return dataclasses.replace(
      config, data=dataclasses.replace(config.data, sampler=sampler),
      run=dataclasses.replace(config.run, **run))


def test_a_changed_sampler_is_refused_then_recorded(tmp_path):
  # The sampler changes which examples the steps draw, not the split:
  # like an optimizer setting, refused unless --allow_config_change.
  config = small_config(tmp_path)
  _saved_run(tmp_path, config)
  balanced = _sampler(config, "class_balanced")
  with pytest.raises(UsageError) as error:
    check_run_dir(tmp_path, balanced)
  message = str(error.value)
  assert "\n" not in message
  assert "data.sampler instance -> class_balanced" in message
  assert "--allow_config_change" in message
  allowed = check_run_dir(tmp_path, _sampler(config, "class_balanced",
                                             allow_config_change=True))
  assert allowed.changes == ({"step": 20, "changed": {
      "data.sampler": ["instance", "class_balanced"]}},)
  assert check_run_dir(tmp_path, config).changes == ()


def test_a_config_from_before_samplers_loads_as_instance(tmp_path):
  config = small_config(tmp_path)
  raw = json.loads(config.to_json())
  del raw["data"]["sampler"]
  _saved_run(tmp_path, config)
  (tmp_path / "config.json").write_text(json.dumps(raw))
  assert TrainConfig.load(tmp_path).data.sampler == "instance"
  assert check_run_dir(tmp_path, config).changes == ()


def test_a_run_recorded_before_a_default_changed_keeps_its_value(tmp_path):
  # CFAL's default sigma changed from 130 to 30 (RESULTS.md, experiment 5).
  # A config.json written before that, without sigma, ran with 130: it is
  # read so, and resuming it with today's default is a refused change.
  from cfal.heads.registry import CHANGED_DEFAULTS  # pylint: disable=import-outside-toplevel
  assert CHANGED_DEFAULTS["cfal"]["sigma"] == (130.0, 30.0)
  config = TrainConfig(model=ModelConfig(head="cfal"))
  assert config.model.head_args == {"sigma": 30.0}
  record = json.loads(config.to_json())
  assert record["model"]["head_args"] == {"sigma": 30.0}
  record["model"]["head_args"] = {}     # as cfal wrote it before the change
  (tmp_path / "config.json").write_text(json.dumps(record))
  assert TrainConfig.load(tmp_path).model.head_args == {"sigma": 130.0}
  with pytest.raises(UsageError) as error:
    check_run_dir(tmp_path, config)
  assert "head_args.sigma 130.0 -> 30.0" in str(error.value)
  assert ("(head_args.sigma 130.0 -> 30.0; cfal's default changed since it "
          "started: pass --sigma=130 to resume it as it was)") in str(
              error.value)
  assert "\n" not in str(error.value)
  as_trained = _with(config, head_args={"sigma": 130.0})
  assert check_run_dir(tmp_path, as_trained).changes == ()
  # Another head's config is read as written.
  record["model"].update(head="affinity", head_args={})
  (tmp_path / "config.json").write_text(json.dumps(record))
  assert TrainConfig.load(tmp_path).model.head_args == {}


def test_recorded_defaults_are_the_head_classes_defaults():
  import inspect  # pylint: disable=import-outside-toplevel
  from cfal import heads  # pylint: disable=import-outside-toplevel
  from cfal.heads.registry import HEADS, recorded_defaults  # pylint: disable=import-outside-toplevel
  for name in HEADS:
    recorded = recorded_defaults(name)
    if not recorded:
      continue
    parameters = inspect.signature(HEADS[name].load()).parameters
    for option, value in recorded.items():
      assert parameters[option].default == value, (name, option)
  assert inspect.signature(heads.Affinity).parameters["sigma"].default == 130
