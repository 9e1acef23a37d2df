"""What runs and evaluations leave behind for people to read.

`tensorboard`: event-file summaries (scalars, images, projector, hparams),
including `write_evaluation`, the one writer of an evaluation's summaries.
`documents`: report.json/report.md/predictions/PNGs, the terminal summary
and the comparison table of several runs.
"""
