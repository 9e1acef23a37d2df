"""Evaluation metrics: in-graph confusion counts, host-side scores from them.

`confusion_matrix_update(labels, predictions, C)` -> int64 [C, C] per batch,
`ConfusionMatrix(C)` accumulates it across steps and replicas, and
`classification_report(confusion)` turns the counts into scikit-learn
compatible scores.

Embedding-space metrics (NumPy, chunked, no [N, N] matrix):
`compactness_separation(embeddings, labels)` measures class compactness
around centroids and centroid separation, and
`retrieval_metrics(embeddings, labels)` gives leave-one-out precision@1,
R-precision and MAP@R; `prototype_geometry(embeddings, labels, prototypes)`
says where each class prototype sits relative to its class mean.
"""

from cfal.metrics.classification import (ConfusionMatrix,
                                         classification_report,
                                         confusion_matrix_update)
from cfal.metrics.embedding import (compactness_separation,
                                    prototype_geometry, retrieval_metrics)

__all__ = ["ConfusionMatrix", "classification_report",
           "compactness_separation", "confusion_matrix_update",
           "prototype_geometry", "retrieval_metrics"]
