"""Metrics against cases computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.eval.metrics import compute_metrics, mean_std


def test_hand_computed_case():
    # 6 samples, 3 classes. Predictions (argmax): [0, 0, 1, 2, 2, 0]; labels: [0, 1, 1, 2, 2, 2]
    scores = np.array([[.9, .05, .05], [.6, .3, .1], [.2, .7, .1], [.1, .2, .7], [.3, .3, .4], [.5, .1, .4]])
    labels = np.array([0, 1, 1, 2, 2, 2])
    m = compute_metrics(scores, labels, 3)
    assert m.top1 == pytest.approx(4 / 6)
    assert m.top5 == 1.0  # fewer than 5 classes: every label is within the top k
    assert m.per_class.tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert m.mean_class_accuracy == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert m.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [1, 0, 2]]
    assert m.num_samples == 6


def test_top5_with_many_classes_and_absent_classes():
    scores = np.tile(np.arange(10, dtype=float), (3, 1))  # class 9 best, then 8, 7, ...
    labels = np.array([9, 5, 4])  # ranks 1, 5, 6
    m = compute_metrics(scores, labels, 10)
    assert m.top1 == pytest.approx(1 / 3) and m.top5 == pytest.approx(2 / 3)
    assert np.isnan(m.per_class[0]) and m.mean_class_accuracy == pytest.approx(1 / 3)  # over classes 4, 5, 9


def test_shape_errors():
    with pytest.raises(ValueError, match=r"do not match 2 labels × 3 classes"):
        compute_metrics(np.zeros((2, 4)), np.array([0, 1]), 3)


def test_mean_std_is_population_std():
    assert mean_std([0.5, 0.7, 0.9]) == pytest.approx({"mean": 0.7, "std": np.sqrt(0.08 / 3), "n": 3})
