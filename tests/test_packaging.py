"""`pip install` gives working console commands, without the clone.

The wheel is built from this checkout and installed into a new virtual
environment; its dependencies come from the test environment through a
.pth file, so nothing is downloaded. The commands then run from a folder
outside the checkout, where only the installed package can answer.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([str(a) for a in args], capture_output=True,
                        text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """A fresh virtual environment with cfal's wheel installed; its bin/."""
  base = tmp_path_factory.mktemp("pip")
  wheels = base / "wheels"
  built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps",
               "--no-build-isolation", "--wheel-dir", wheels, ROOT,
               cwd=base)
  assert built.returncode == 0, built.stderr
  env_dir = base / "venv"
  made = _run(sys.executable, "-m", "venv", "--without-pip", env_dir)
  assert made.returncode == 0, made.stderr
  python = env_dir / "bin" / "python"
  site = _run(python, "-c", "import sysconfig; "
              "print(sysconfig.get_paths()['purelib'])").stdout.strip()
  # The dependencies (TensorFlow, absl, ...) of the test environment.
  pathlib.Path(site, "deps.pth").write_text(
      sysconfig.get_paths()["purelib"] + "\n")
  wheel = next(wheels.glob("cfal-*.whl"))
  done = _run(sys.executable, "-m", "pip", "--python", python, "install",
              "--no-deps", "--no-index", wheel, cwd=base)
  assert done.returncode == 0, done.stderr
  return env_dir / "bin"


def test_console_commands_are_installed_and_answer_help(installed, tmp_path):
  for command, words in (("cfal-train", ("--head", "--flagfile", "cfal-train")),
                         ("cfal-eval", ("--logdir", "--checkpoint"))):
    done = _run(installed / command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for word in words:
      assert word in done.stdout, (command, word)


def test_installed_commands_use_the_installed_package(installed, tmp_path):
  # From outside the checkout, the package that answers is the wheel's.
  where = _run(installed / "python", "-c",
               "import cfal.commands.train as m; print(m.__file__)",
               cwd=tmp_path).stdout.strip()
  assert str(ROOT) not in where and "site-packages" in where
  done = _run(installed / "cfal-train", "--dataset=imagenet", cwd=tmp_path)
  assert done.returncode == 2
  assert done.stderr.splitlines() == [
      "cfal-train: Unknown dataset 'imagenet'; choose one of fashion_mnist, "
      "mnist, folder:<path>, csv:<path>."]
