"""The peers' outputs on the parity cases, kept in tests/golden (written by tests/golden/make_golden.py, which holds
the cases): (a) the installed peer still computes them, so a reference that moves fails here rather than moving both
sides of a parity test together; (b) our model, converted from the same weights as each parity test converts them,
computes them too; (c) the golden files say which peer versions wrote them, and those are the installed ones."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("make_golden", Path(__file__).parent / "golden" / "make_golden.py")
golden = importlib.util.module_from_spec(_spec)
sys.modules["make_golden"] = golden  # dataclasses look their module up by name
_spec.loader.exec_module(golden)

# (a): golden.PEER_RTOL (2e-5) times max(1, the output's largest magnitude), where it comes from is written there.
# (b): 1e-4, the parity tests' tolerance on features (test_siglip and test_xclip take it for logits too; here the
# logits are at most 3.5, at scale 10). Measured: ours against the golden outputs at most 1.7e-6 (open_clip's image
# features; 6e-7 hf_clip, siglip and xclip's logits; the text features equal to the last bit).
OURS_ATOL = 1e-4
REGENERATE = ("run `.venv/bin/python tests/golden/make_golden.py --check`, find out why the peer's outputs changed (its "
              "changelog), and only then regenerate; review the diff, do not just commit it")


@pytest.fixture(scope="module")
def stored() -> tuple[dict[str, np.ndarray], dict]:
    return golden.load()


@pytest.fixture(scope="module", params=list(golden.CASES))
def case(request):
    """(name, case, peer model with the golden weights, inputs)."""
    name = request.param
    c = golden.CASES[name]
    return name, c, c.peer(), c.inputs()


def _mismatches(got: dict[str, np.ndarray], want: dict[str, np.ndarray], tol) -> list[str]:
    """One line per output that is missing, of another shape, or further from ``want`` than ``tol(want)``."""
    bad = [f"{k}: not computed" for k in sorted(set(want) - set(got))]
    for k in sorted(want.keys() & got.keys()):
        g, w = got[k], want[k]
        if g.shape != w.shape:
            bad.append(f"{k}: shape {g.shape}, golden {w.shape}")
            continue
        diff, limit = float(np.abs(g.astype(np.float64) - w).max()), tol(w)
        if not diff <= limit:  # NaN fails too
            bad.append(f"{k}: max |got - golden| = {diff:.3g} > {limit:.3g}")
    return bad


def _peer_tol(w: np.ndarray) -> float:
    return golden.PEER_RTOL * max(1.0, float(np.abs(w).max()))


def _golden_of(stored, name: str) -> dict[str, np.ndarray]:
    arrays, _ = stored
    want = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{name}/")}
    assert want, f"tests/golden/peers.npz has no outputs of case {name}: run make_golden.py"
    return want


def _one_off(want: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The golden outputs with one value moved by 1e-3: what each comparison must reject."""
    return {k: v + (np.arange(v.size).reshape(v.shape) == v.size // 2) * np.float32(1e-3) for k, v in want.items()}


def test_the_peer_still_gives_the_golden_outputs(case, stored):
    name, c, peer, inputs = case
    want = _golden_of(stored, name)
    got = golden.run(c.peer_outputs, peer, inputs)
    bad = _mismatches(got, want, _peer_tol)
    if bad:
        meta = stored[1]
        why = [f"{c.library} {golden.installed_versions()[c.library]} installed, "
               f"{meta['versions'].get(c.library)} wrote the golden files"]
        if golden.digest(inputs) != meta["cases"][name]["inputs_sha256"]:
            why.append("the inputs are not the golden inputs (numpy's RandomState or the case changed)")
        if golden.digest(peer.state_dict()) != meta["cases"][name]["weights_sha256"]:
            why.append("the peer's parameters (names, shapes or values) are not those the golden outputs came from")
        pytest.fail(f"{name}: {'; '.join(bad)} ({'; '.join(why)}): the reference moved: {REGENERATE}")
    assert all(_mismatches(got, {k: v}, _peer_tol) for k, v in _one_off(want).items())  # the check can fail


def test_ours_from_the_peer_weights_gives_the_golden_outputs(case, stored, tmp_path):
    name, c, peer, inputs = case
    want = _golden_of(stored, name)
    got = golden.run(c.ours_outputs, c.ours(peer, tmp_path), inputs)
    bad = _mismatches(got, want, lambda _: OURS_ATOL)
    assert not bad, f"{name}: our model, converted from the peer's weights, is off the peer's golden outputs: {bad}"
    assert all(_mismatches(got, {k: v}, lambda _: OURS_ATOL) for k, v in _one_off(want).items())


def test_the_golden_files_were_written_by_the_installed_peers(stored):
    arrays, meta = stored
    recorded, installed = meta["versions"], golden.installed_versions()
    moved = {k: (recorded.get(k), v) for k, v in installed.items() if recorded.get(k) != v}
    assert not moved, f"(recorded, installed) versions differ: {moved}; a peer was upgraded: {REGENERATE}"
    assert set(meta["cases"]) == set(golden.CASES) == {k.split("/")[0] for k in arrays}
    assert meta["date"] and all(a.dtype == np.float32 for a in arrays.values())
