"""Training and evaluation: build -> steps -> controller -> actions, and
the evaluator. Import the modules themselves (`cfal.training.runner`,
`cfal.training.evaluate`, ...); importing this package loads nothing."""
