"""What the entry points do to the process before TensorFlow loads."""

import os
import subprocess
import sys
import textwrap

from cfal import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, env_drop=("TF_ENABLE_ONEDNN_OPTS",)) -> str:
  env = {k: v for k, v in os.environ.items() if k not in env_drop}
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        check=True).stdout.strip()


def test_importing_cfal_leaves_the_environment_alone():
  # Importing the library used to turn oneDNN on as a side effect, so
  # TensorFlow behaved differently depending on import order.
  out = _python("""
      import os
      import cfal, cfal.heads
      print(os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"))
  """)
  assert out == "unset"


def test_the_entry_points_turn_onednn_on_unless_told_not_to():
  assert _python("""
      import os
      from cfal import cli
      cli.prepare_environment()
      print(os.environ["TF_ENABLE_ONEDNN_OPTS"])
  """) == "1"
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")
  out = subprocess.run(
      [sys.executable, "-c", "import os; from cfal import cli; "
       "cli.prepare_environment(); print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"],
      cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "0"


def test_the_filtered_import_drops_known_noise_and_keeps_errors(tmp_path):
  # A module that prints, at import time and on file descriptor 2 as
  # native code does, TensorFlow's banners and an error a GPU machine
  # could print. The filter must keep the error line (the old quiet
  # import silenced all of stderr).
  (tmp_path / "noisy_native.py").write_text(textwrap.dedent("""
      import os
      os.write(2, b"WARNING: All log messages before absl::InitializeLog() "
                  b"is called are written to STDERR\\n")
      os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations "
                  b"are on. You may see slightly different numerical results\\n")
      os.write(2, b"E0000 00:00:2.0 1 cuda_driver.cc:97] failed call to "
                  b"cuInit: CUDA_ERROR_NO_DEVICE\\n")
      os.write(2, b"I0000 cpu_feature_guard.cc:227] This TensorFlow binary is "
                  b"optimized to use available CPU instructions in x.\\n")
  """))
  code = f"""
      import sys
      sys.path.insert(0, {str(tmp_path)!r})
      from cfal import cli
      cli.import_filtered("noisy_native")
  """
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          cwd=ROOT, capture_output=True, text=True,
                          check=True)
  lines = result.stderr.strip().splitlines()
  assert lines == ["E0000 00:00:2.0 1 cuda_driver.cc:97] failed call to "
                   "cuInit: CUDA_ERROR_NO_DEVICE"]


def test_noise_patterns_match_only_the_banners():
  assert cli._NOISE.search("I0000 port.cc:153] oneDNN custom operations are "
                           "on. You may see")
  assert not cli._NOISE.search("E0000 failed to load libcudnn.so.9")
  assert not cli._NOISE.search("Could not load dynamic library 'libcudart'")


def test_done_lines_from_the_checkout(monkeypatch):
  monkeypatch.chdir(ROOT)
  lines = cli.done_lines("train.py", "runs/x", "runs/x/export")
  assert lines[0] == ("Done. Checkpoints in runs/x/checkpoints, SavedModel "
                      "in runs/x/export.")
  assert lines[1].endswith(" eval.py --logdir=runs/x")
  assert lines[1].startswith("Evaluate on the test split: ")
  assert "tensorboard --logdir=runs/x --host=127.0.0.1" in lines[2]


def test_done_lines_from_elsewhere_name_the_scripts_path(monkeypatch,
                                                         tmp_path):
  # Run as `python /path/to/train.py` from another folder, the suggestion
  # was `python eval.py`, which is not there.
  monkeypatch.chdir(tmp_path)
  script = os.path.join(ROOT, "train.py")
  lines = cli.done_lines(script, "my runs/x", None)
  evaluate = lines[1].split(": ", 1)[1]
  assert f"{os.path.join(ROOT, 'eval.py')} --logdir='my runs/x'" in evaluate
  assert lines[0] == "Done. Checkpoints in my runs/x/checkpoints."


def test_done_lines_for_a_folder_evaluate_validation(monkeypatch):
  monkeypatch.chdir(ROOT)
  lines = cli.done_lines("cfal-train", "runs/tiles", None,
                         has_test_split=False)
  assert lines[1].startswith("Evaluate on the validation split: ")
  assert lines[1].endswith("--logdir=runs/tiles --split=validation")
  assert "cfal-eval" in lines[1]


def test_suggested_commands_run_this_environment(monkeypatch):
  # With the environment not activated, the bare name would find another
  # tensorboard (or none); the suggestion is the one beside this Python.
  import pathlib  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("PATH", "/nonexistent")
  beside = pathlib.Path(sys.executable).parent / "tensorboard"
  assert beside.exists()
  shown = cli.command("tensorboard")
  assert shown != "tensorboard"
  assert pathlib.Path(shown).resolve() == beside.resolve() or (
      (pathlib.Path.cwd() / shown).resolve() == beside.resolve())
  monkeypatch.setenv("PATH", str(beside.parent))
  assert cli.command("tensorboard") == "tensorboard"
