"""Linear probe: perfect on separable features, C chosen on the training split's held-out part only, save/load."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from pipeline.eval.linear_probe import LinearProbe, ProbeSettings, fit_probe


def _separable(n_per_class: int, classes: int, dim: int = 16, seed: int = 0, noise_seed: int = 100):
    centres = np.random.default_rng(seed).normal(size=(classes, dim)) * 3
    rng = np.random.default_rng(noise_seed)
    x = np.concatenate([c + 0.3 * rng.normal(size=(n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(classes), n_per_class)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def test_separable_features_reach_100_percent():
    x, y = _separable(30, 5)
    xt, yt = _separable(10, 5, seed=0, noise_seed=7)  # same classes, unseen samples
    probe = fit_probe(x, y, tuple("abcde"))
    assert (probe.predict_proba(x).argmax(1) == y).mean() == 1.0
    assert (probe.predict_proba(xt).argmax(1) == yt).mean() == 1.0


def test_c_is_the_validation_argmax_and_test_data_cannot_move_it():
    x, y = _separable(20, 4, seed=1)
    x = x + np.random.default_rng(5).normal(size=x.shape) * 0.35  # overlapping classes: C matters
    settings = ProbeSettings(c_grid=(1e-3, 1e-1, 10.0, 1e3))
    probe = fit_probe(x, y, tuple("abcd"), settings)
    # independent recomputation of the sweep on the same held-out split
    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    for C, acc in probe.val_accuracy.items():
        ref = LogisticRegression(C=C, max_iter=1000, random_state=0).fit(x_fit, y_fit).score(x_val, y_val)
        assert acc == pytest.approx(ref)
    best_acc = max(probe.val_accuracy.values())
    assert probe.val_accuracy[probe.C] == best_acc
    assert probe.C == min(c for c, a in probe.val_accuracy.items() if a == best_acc)
    assert set(probe.val_accuracy) >= set(settings.c_grid)


def test_save_load_round_trip_without_pickle(tmp_path):
    x, y = _separable(10, 3)
    probe = fit_probe(x, y, ("run", "jump", "swim"))
    path = probe.save(tmp_path / "probe.npz")
    again = LinearProbe.load(path)
    assert again.classnames == probe.classnames and again.C == probe.C
    assert np.allclose(again.predict_proba(x), probe.predict_proba(x))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz: not a saved linear probe"):
        LinearProbe.load(tmp_path / "junk.npz")


def test_classes_missing_from_training_are_never_predicted():
    x, y = _separable(10, 3)
    probe = fit_probe(x[y != 1], y[y != 1], ("a", "b", "c"))
    assert probe.coef.shape[0] == 3 and (probe.predict_proba(x).argmax(1) != 1).all()
