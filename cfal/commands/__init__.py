"""The command-line programs: `cfal-train` and `cfal-eval`.

The only place in the package that defines command-line flags. The
library never imports this package; `pip install` makes console commands
of `train.run` and `eval.run`, and the repository's `train.py` and
`eval.py` call the same functions.
"""
