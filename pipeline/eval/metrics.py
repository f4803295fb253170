"""Classification metrics (scikit-learn where it has them) and the split aggregation used by the protocols."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, top_k_accuracy_score


@dataclass(frozen=True)
class Metrics:
    top1: float
    top5: float
    mean_class_accuracy: float  # mean of per-class accuracies over the classes present in the labels
    per_class: np.ndarray  # (C,) accuracy per class; NaN for classes with no sample
    confusion: np.ndarray  # (C, C) counts, rows = true class, columns = predicted
    num_samples: int

    def summary(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5, "mean_class_accuracy": self.mean_class_accuracy,
                "num_samples": self.num_samples}


def compute_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> Metrics:
    """``scores`` (N, C) of any monotone kind (logits or probabilities), ``labels`` (N,) in [0, C)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if scores.shape != (len(labels), num_classes):
        raise ValueError(f"scores of shape {scores.shape} do not match {len(labels)} labels × {num_classes} classes")
    if len(labels) == 0:
        raise ValueError("no samples to score")
    classes = np.arange(num_classes)
    pred = scores.argmax(axis=1)
    k = min(5, num_classes)
    top5 = 1.0 if k == num_classes else top_k_accuracy_score(labels, scores, k=k, labels=classes)
    confusion = confusion_matrix(labels, pred, labels=classes)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / support, np.nan)
    return Metrics(float(accuracy_score(labels, pred)), float(top5), float(np.nanmean(per_class)), per_class,
                   confusion, len(labels))


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and population standard deviation (ddof=0) over splits, as the split protocols report them."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=0)), "n": len(a)}
