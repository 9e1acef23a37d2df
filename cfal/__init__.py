"""cfal: max-margin classification heads and an explicit TF training loop."""

__version__ = "0.1.0"
