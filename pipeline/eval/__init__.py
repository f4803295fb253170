"""Evaluation: the scikit-learn linear probe and the accuracy metrics."""
