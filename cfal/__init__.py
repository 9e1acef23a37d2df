"""cfal: max-margin classification heads and an explicit TF training loop."""

import os as _os

# TensorFlow leaves its oneDNN CPU kernels off on CPUs it was not tuned for
# (this AMD Zen 3 among them). With them on, a seed-CNN train step ran 1.5x
# to 3x faster here (bench/loop.py, BENCHMARKS.md). It only takes effect if
# cfal is imported before TensorFlow; set TF_ENABLE_ONEDNN_OPTS=0 to opt out.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
