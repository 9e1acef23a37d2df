"""cfal: max-margin classification heads and an explicit TF training loop.

Importing cfal changes nothing in the environment. The scripts (train.py,
eval.py, bench/) turn TensorFlow's oneDNN CPU kernels on before TensorFlow
loads (`cfal.cli.prepare_environment`); in your own program, set
`TF_ENABLE_ONEDNN_OPTS=1` before importing TensorFlow for the same speed.
"""

__version__ = "0.1.0"
