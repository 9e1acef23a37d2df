"""Flags absl itself refuses: one line, exit 2, like every usage error."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script, args, expected", [
    ("train.py", ["--nope"], "train.py: Unknown command line flag 'nope' "
     "(see --help)"),
    ("train.py", ["--flagfile=flags/missing.flags"], "train.py: Unable to "
     "open flagfile: [Errno 2] No such file or directory: "
     "'flags/missing.flags' (see --help)"),
    ("train.py", ["--step_mode=fast"], "train.py: flag --step_mode=fast: "
     "value should be one of <auto|eager|function|xla> (see --help)"),
    ("eval.py", ["--split=tset"], "eval.py: flag --split=tset: value should "
     "be one of <test|validation> (see --help)"),
], ids=["unknown_flag", "missing_flagfile", "bad_enum", "eval_bad_enum"])
def test_flag_parsing_errors_are_one_line_and_exit_2(script, args, expected):
  # absl printed two lines ("FATAL Flags parsing error: ...", "Pass
  # --helpshort ...") and exited 1.
  done = subprocess.run([sys.executable, str(ROOT / script), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert done.returncode == 2
  assert done.stderr.splitlines() == [expected]
