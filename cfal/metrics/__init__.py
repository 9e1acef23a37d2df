"""Evaluation metrics: in-graph confusion counts, host-side scores from them.

`confusion_matrix_update(labels, predictions, C)` -> int64 [C, C] per batch,
`ConfusionMatrix(C)` accumulates it across steps and replicas, and
`classification_report(confusion)` turns the counts into scikit-learn
compatible scores.
"""

from cfal.metrics.classification import (ConfusionMatrix,
                                         classification_report,
                                         confusion_matrix_update)

__all__ = ["ConfusionMatrix", "classification_report",
           "confusion_matrix_update"]
