"""Checking image files with Pillow once, remembered in a scan cache.

A tile set of 100,000 files takes minutes to decode; its files rarely
change between runs. :func:`check_files` decodes each file once and keeps
what it found (size, modification time in ns, channel count or the reason
it is unreadable) in a JSON file under the cfal cache. The next run only
lists the files and compares sizes and modification times: files that
were added or changed are checked again, removed ones are forgotten, the
rest are taken from the cache.

The cache lives in `$CFAL_CACHE_DIR/scans/` (default `~/.cache/cfal/scans/`),
never beside the data, which may be read-only; one file per image folder or
CSV manifest, named after a hash of its real absolute path. Delete the file
to force a full check. A cache that cannot be read (corrupt, another
version, another source) is ignored and rewritten; one that cannot be
written is skipped silently: the cache only ever saves time.

A file modified less than `RACY_SECONDS` before the scan started is
checked but not cached: file systems store modification times with a
granularity of milliseconds to seconds, so a file rewritten with the same
size right after a scan could otherwise keep its stale entry.

This module needs Pillow and NumPy, not TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from PIL import Image

__all__ = ["CACHE_ENV_VAR", "Check", "ScanProgress", "ScanResult",
           "check_files", "print_progress", "scan_cache_dir", "VERIFY_MODES"]

CACHE_ENV_VAR = "CFAL_CACHE_DIR"
VERIFY_MODES = ("full", "header")
RACY_SECONDS = 2.0
_FORMAT = "cfal-scan"
_VERSION = 1
# Files checked per round between progress reports and cache saves.
_CHUNK = 256

# Pillow modes that hold one grey channel (possibly with alpha, dropped on
# conversion); every other mode (RGB, RGBA, P, CMYK, YCbCr, ...) becomes RGB.
GRAY_MODES = frozenset(
    {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclasses.dataclass(frozen=True)
class Check:
  """What checking one file found.

  Attributes:
    channels: 1 or 3 for a readable image (greyscale modes 1, all others 3),
      0 for a file that cannot be used.
    reason: why the file cannot be used (one line), None if it can.
  """

  channels: int
  reason: str | None = None


_GOOD = {1: Check(1), 3: Check(3)}


@dataclasses.dataclass(frozen=True)
class ScanProgress:
  """How far a scan has got; `str()` gives a one-line report.

  Attributes:
    source: the folder or CSV manifest being checked.
    checked: files decoded so far in this scan.
    total: files this scan has to decode (the others came from the cache).
    bad: unreadable files among those checked.
    elapsed: seconds since checking started.
    done: True for the last report of a scan.
  """

  source: str
  checked: int
  total: int
  bad: int
  elapsed: float
  done: bool = False

  def __str__(self) -> str:
    bad = f", {self.bad:,} unreadable" if self.bad else ""
    if self.done:
      return (f"Checked {self.total:,} image files in {self.source} in "
              f"{_duration(self.elapsed)}{bad}.")
    rate = self.checked / self.elapsed if self.elapsed > 0 else 0.0
    left = ((self.total - self.checked) / rate) if rate > 0 else None
    eta = f", about {_duration(left)} left" if left is not None else ""
    return (f"Checking image files in {self.source}: {self.checked:,}/"
            f"{self.total:,} ({self.checked / max(self.total, 1):.0%}){bad}, "
            f"{rate:,.0f} files/s{eta}")


@dataclasses.dataclass(frozen=True)
class ScanResult:
  """What :func:`check_files` found.

  Attributes:
    checks: one `Check` per key, in the order given.
    verified: how many files were decoded in this scan.
    reused: how many results came from the cache.
    cache_file: the cache read or written, None when neither worked.
  """

  checks: tuple[Check, ...]
  verified: int
  reused: int
  cache_file: str | None


def scan_cache_dir() -> str:
  """Where scan caches go: `$CFAL_CACHE_DIR/scans`, else
  `~/.cache/cfal/scans`."""
  base = os.environ.get(CACHE_ENV_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "cfal")
  return os.path.join(base, "scans")


def print_progress(stream: IO[str] | None = None
                   ) -> Callable[[ScanProgress], None]:
  """A progress callback that writes to `stream` (default stderr).

  On a terminal one line is rewritten in place and finished with a
  newline by the last report; elsewhere (a log file) every report is its
  own line.
  """
  out = stream or sys.stderr
  tty = bool(getattr(out, "isatty", lambda: False)())

  def report(progress: ScanProgress) -> None:
    if tty:
      out.write("\r\x1b[2K" + str(progress) + ("\n" if progress.done else ""))
    else:
      out.write(str(progress) + "\n")
    out.flush()
  return report


def reason_of(error: BaseException, path: str) -> str:
  """`TypeName: message` on one line, without the path it is listed with."""
  message = " ".join(str(error).replace(f" {path!r}", "").split())
  return f"{type(error).__name__}: {message}" if message else (
      type(error).__name__)


def probe(path: str, full: bool) -> Check:
  """Opens (and with `full`, decodes) `path` with Pillow."""
  try:
    with Image.open(path) as image:
      if full:
        image.load()
      return _GOOD[1 if image.mode in GRAY_MODES else 3]
  # Pillow signals a bad file with many exception types (OSError,
  # SyntaxError, ValueError, struct.error, DecompressionBombError, ...);
  # any of them means the file cannot be used.
  except Exception as e:  # pylint: disable=broad-except
    return Check(0, reason_of(e, path))


def check_files(
    source: str,
    keys: Sequence[str],
    paths: Sequence[str],
    *,
    kind: str,
    verify: str = "full",
    num_workers: int = 8,
    use_cache: bool = True,
    progress: Callable[[ScanProgress], None] | None = None,
    progress_every: float = 5.0,
) -> ScanResult:
  """Checks image files, reusing what an earlier scan of `source` found.

  Args:
    source: the folder or manifest the files belong to; names the cache.
    keys: how the cache names each file (a path relative to `source`, or
      the absolute path); unique.
    paths: the files to check, one per key.
    kind: what `source` is ("folder", "csv"); part of the cache's name.
    verify: "full" decodes every file; "header" only opens it. A file
      fully decoded before also counts as checked for "header".
    num_workers: threads decoding in parallel.
    use_cache: read and write the scan cache.
    progress: called with a `ScanProgress` every `progress_every` seconds
      while files are being decoded, and once more when done if it was
      called before (short scans report nothing).
    progress_every: seconds between progress reports (and cache saves are
      at most every 12 of them).

  Returns:
    A `ScanResult`. A file that is missing or cannot be listed is a
    `Check(0, reason)`, never an exception.

  Raises:
    ValueError: if `verify` or `num_workers` is invalid.
  """
  if verify not in VERIFY_MODES:
    raise ValueError(f"verify must be 'full' or 'header', got {verify!r}")
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers}")
  started = time.time_ns()
  real = os.path.realpath(source)
  cache_file = (os.path.join(scan_cache_dir(), _cache_name(kind, real))
                if use_cache else None)
  cached = _read_cache(cache_file, kind, real) if cache_file else {}
  checks: list[Check | None] = [None] * len(keys)
  stats: list[tuple[int, int] | None] = [None] * len(keys)
  todo = []
  for i, (key, path) in enumerate(zip(keys, paths)):
    try:
      st = os.stat(path)
    except OSError as e:
      checks[i] = Check(0, f"{type(e).__name__}: {e.strerror or e}")
      continue
    stats[i] = (st.st_size, st.st_mtime_ns)
    entry = cached.get(key)
    if (entry is not None and entry[0] == st.st_size
        and entry[1] == st.st_mtime_ns
        and (entry[2] == "full" or entry[2] == verify)):
      checks[i] = _GOOD[entry[3]] if entry[4] is None else Check(entry[3],
                                                                 entry[4])
    else:
      todo.append(i)
  reused = sum(1 for i in range(len(keys))
               if checks[i] is not None and stats[i] is not None)

  racy_after = started - int(RACY_SECONDS * 1e9)

  def entries() -> dict[str, list]:
    kept = {}
    for i, key in enumerate(keys):
      if checks[i] is None or stats[i] is None or stats[i][1] > racy_after:
        continue
      level = verify
      old = cached.get(key)
      if old is not None and old[:2] == list(stats[i]) and old[2] == "full":
        level = "full"
      kept[key] = [stats[i][0], stats[i][1], level, checks[i].channels,
                   checks[i].reason]
    return kept

  full = verify == "full"
  begun = time.monotonic()
  last_report = last_save = begun
  reported = False
  bad = 0
  written = False
  if todo:
    with ThreadPoolExecutor(max_workers=min(num_workers, len(todo))) as ex:
      for start in range(0, len(todo), _CHUNK):
        chunk = todo[start:start + _CHUNK]
        for i, check in zip(chunk, ex.map(lambda j: probe(paths[j], full),
                                          chunk)):
          checks[i] = check
          bad += check.channels == 0
        now = time.monotonic()
        if progress is not None and now - last_report >= progress_every:
          progress(ScanProgress(source, start + len(chunk), len(todo), bad,
                                now - begun))
          last_report, reported = now, True
        if cache_file and now - last_save >= 12 * progress_every:
          # A long first scan that is interrupted keeps what it did.
          written = _write_cache(cache_file, kind, real, entries())
          last_save = now
  if progress is not None and reported:
    progress(ScanProgress(source, len(todo), len(todo), bad,
                          time.monotonic() - begun, done=True))
  if cache_file and (todo or not set(cached) <= set(keys)):
    written = _write_cache(cache_file, kind, real, entries())
  elif cache_file:
    written = bool(cached) or written
  return ScanResult(checks=tuple(checks), verified=len(todo), reused=reused,
                    cache_file=cache_file if written else None)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes}m{seconds:02d}s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m"


def _cache_name(kind: str, real: str) -> str:
  digest = hashlib.sha256(f"{kind}\0{real}".encode("utf-8", "surrogateescape"))
  return f"{kind}-{digest.hexdigest()[:24]}.json"


def _read_cache(cache_file: str, kind: str, real: str) -> dict[str, list]:
  """The cached entries, or {} for a missing, corrupt or foreign file."""
  try:
    with open(cache_file, encoding="utf-8") as f:
      data = json.load(f)
    if (data.get("format") != _FORMAT or data.get("version") != _VERSION
        or data.get("kind") != kind or data.get("source") != real):
      return {}
    good = {}
    for key, entry in data["files"].items():
      if _valid_entry(entry):
        good[key] = list(entry)
    return good
  # A cache is only ever a shortcut: anything unreadable means "scan".
  except Exception:  # pylint: disable=broad-except
    return {}


def _valid_entry(entry) -> bool:
  """Whether `entry` is [size, mtime_ns, verify, channels, reason]."""
  if not isinstance(entry, list) or len(entry) != 5:
    return False
  size, mtime, level, channels, reason = entry
  # bool is an int subclass; JSON's true must not pass for a size.
  ints = all(isinstance(v, int) and not isinstance(v, bool)
             for v in (size, mtime, channels))
  return (ints and level in VERIFY_MODES and channels in (0, 1, 3)
          and (reason is None) == (channels != 0)
          and (reason is None or isinstance(reason, str)))


def _write_cache(cache_file: str, kind: str, real: str,
                 files: dict[str, list]) -> bool:
  """Writes the cache atomically; False if that was not possible."""
  folder = os.path.dirname(cache_file)
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".scan-", suffix=".tmp")
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"format": _FORMAT, "version": _VERSION, "kind": kind,
                   "source": real, "files": files}, f,
                  separators=(",", ":"))
      os.replace(tmp, cache_file)
    except BaseException:
      try:
        os.unlink(tmp)
      except OSError:
        pass
      raise
    return True
  except OSError:
    return False
