"""Evaluate a trained run: `python eval.py --help`.

The program is `cfal.commands.eval` (installed as `cfal-eval`); this file
lets a clone of the repository run it without installing.
"""

from cfal.commands.eval import run

if __name__ == "__main__":
  run()
