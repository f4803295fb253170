"""Linear probe on pooled video features: scikit-learn's L-BFGS logistic regression, C chosen on a held-out part of
the training split (as in the CLIP paper), refit on the whole split, saved without pickle."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from clip_model.errors import UserError

DEFAULT_C_GRID = tuple(float(c) for c in 10.0 ** np.arange(-4, 5))  # refined by half-decades around the best


@dataclass(frozen=True)
class ProbeSettings:
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    val_fraction: float = 0.2
    max_iter: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction ({self.val_fraction}) must lie in (0, 1)")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise UserError(f"c_grid must hold positive values, got {self.c_grid}")


@dataclass(frozen=True, eq=False)  # arrays inside: a probe equals itself only, as settings holding it compare
class LinearProbe:
    classnames: tuple[str, ...]
    coef: np.ndarray  # (C, E)
    intercept: np.ndarray  # (C,)
    C: float
    val_accuracy: dict[float, float] = field(default_factory=dict)  # the sweep: C -> held-out accuracy
    # the features it was fitted on: model (the spec to load), identity (loading.model_identity without the
    # precision), pooling and num_frames; empty for a probe saved before they were recorded
    fitted_on: dict = field(default_factory=dict)
    source: str = field(default="linear probe", compare=False)  # the file it was loaded from (its errors name it)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, E) L2-normalised video features -> (N, C) logits."""
        return np.asarray(features, dtype=np.float64) @ self.coef.T + self.intercept

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        z = self.logits(features)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def save(self, path: str | Path) -> Path:
        """``.npz`` with the weights and a JSON header: loadable with allow_pickle=False."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"format": "clip_video.linear_probe", "version": 1, "classnames": list(self.classnames),
                             "C": self.C, "val_accuracy": {str(k): v for k, v in self.val_accuracy.items()},
                             "fitted_on": self.fitted_on})
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, coef=self.coef, intercept=self.intercept, header=np.array(header))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LinearProbe:
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                coef, intercept = z["coef"], z["intercept"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: not a saved linear probe ({e})") from None
        if header.get("format") != "clip_video.linear_probe":
            raise UserError(f"{path}: not a saved linear probe (format {header.get('format')!r})")
        return cls(tuple(header["classnames"]), coef, intercept, float(header["C"]),
                   {float(k): v for k, v in header["val_accuracy"].items()}, header.get("fitted_on") or {}, str(path))


def fitted_on(spec: str, pooling: str, num_frames: int) -> dict:
    """What a probe records of the features it was fitted on (``LinearProbe.fitted_on``): the model, by what
    identifies its weights (``loading.model_identity``; the precision aside: bf16 features are fp32's to
    cosine 0.9999), and how its frames were sampled and pooled."""
    identity = _weights_identity(spec)
    return {"model": identity["spec"], "identity": identity, "pooling": pooling, "num_frames": num_frames}


def _weights_identity(spec: str) -> dict:
    """``loading.model_identity`` without the precision: what a probe's features depend on."""
    from pipeline.model.loading import model_identity

    identity = model_identity(spec)
    identity.pop("precision")
    return identity


def check_fitted_on(probe: LinearProbe, spec: str) -> None:
    """Refuse, in one line, to apply ``probe`` to the features of another model than the one it was fitted on."""
    if not probe.fitted_on:
        return
    if _weights_identity(spec) != probe.fitted_on["identity"]:
        raise UserError(f"{probe.source}: this probe was fitted on the features of {probe.fitted_on['model']}, not of "
                         f"{spec}: leave --model out to use its own, or fit a probe on {spec} (benchmark, protocol "
                         "linear_probe)")


def _fit(x: np.ndarray, y: np.ndarray, C: float, settings: ProbeSettings) -> LogisticRegression:
    return LogisticRegression(C=C, solver="lbfgs", max_iter=settings.max_iter, random_state=settings.seed).fit(x, y)


def fit_probe(features: np.ndarray, labels: np.ndarray, classnames: tuple[str, ...],
              settings: ProbeSettings = ProbeSettings()) -> LinearProbe:
    """Sweep C on a stratified held-out part of the *training* features, then refit on all of them.

    Only training data enters here, so the test split can never influence C.
    """
    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=len(classnames))
    stratify = y if counts[counts > 0].min() >= 2 else None
    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=settings.val_fraction, random_state=settings.seed,
                                                  stratify=stratify)
    scores = {C: float(_fit(x_fit, y_fit, C, settings).score(x_val, y_val)) for C in settings.c_grid}
    best = max(scores, key=lambda c: (scores[c], -c))  # ties go to the stronger regularisation
    for C in (best / np.sqrt(10), best * np.sqrt(10)):  # one half-decade refinement on each side
        scores[float(C)] = float(_fit(x_fit, y_fit, float(C), settings).score(x_val, y_val))
    best = max(scores, key=lambda c: (scores[c], -c))
    model = _fit(x, y, best, settings)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) != len(classnames):  # classes absent from training can never be predicted
        full_coef = np.zeros((len(classnames), x.shape[1]))
        full_int = np.full(len(classnames), -1e9)
        if coef.shape[0] == 1:  # binary problems come back as one row
            coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
        full_coef[model.classes_], full_int[model.classes_] = coef, intercept
        coef, intercept = full_coef, full_int
    elif coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    return LinearProbe(tuple(classnames), coef, intercept, best, dict(sorted(scores.items())))
