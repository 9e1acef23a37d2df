"""Train a backbone + max-margin head: `python train.py --help`.

The program is `cfal.commands.train` (installed as `cfal-train`); this file
lets a clone of the repository run it without installing.
"""

from cfal.commands.train import run

if __name__ == "__main__":
  run()
