"""Benchmark outputs: results.json, predictions.csv, errors.csv and a self-contained HTML report with plots."""
from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.eval.metrics import Metrics


def _figure_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plot_png(size: tuple[float, float], draw: Callable[[Any], None]) -> str:
    """A base64 PNG of one matplotlib axes of ``size`` inches, drawn by ``draw(ax)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        draw(ax)
        return _figure_png(fig)
    finally:
        plt.close(fig)


def confusion_png(metrics: Metrics, classnames: list[str], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classnames)
    size = min(14, 3 + 0.18 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = metrics.confusion.sum(axis=1, keepdims=True)
    norm = np.divide(metrics.confusion, rows, out=np.zeros_like(metrics.confusion, dtype=float), where=rows > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), classnames, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classnames, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    png = _figure_png(fig)
    plt.close(fig)
    return png


def per_class_png(metrics: Metrics, classnames: list[str], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(np.nan_to_num(metrics.per_class, nan=-1))
    shown = order[:30] if len(order) > 60 else order  # the worst classes, when there are many
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(shown) + 1.2))
    ax.barh(range(len(shown)), np.nan_to_num(metrics.per_class[shown]), color="#4477aa")
    ax.set_yticks(range(len(shown)), [classnames[i] for i in shown], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title(title + (" (30 worst classes)" if len(order) > 60 else ""))
    png = _figure_png(fig)
    plt.close(fig)
    return png


def write_reports(out: Path, results: dict, predictions: pd.DataFrame, errors: pd.DataFrame,
                  plots: list[tuple[str, str]], sections: Sequence[tuple[str, str]] = ()) -> None:
    """Write everything atomically into ``out`` (each file via a temporary name). ``sections``: (title, HTML) parts
    the report shows after its plots."""
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / "results.json", json.dumps(results, indent=2, default=_jsonable))
    _atomic(out / "predictions.csv", predictions.to_csv(index=False))
    _atomic(out / "errors.csv", errors.to_csv(index=False))
    _atomic(out / "report.html", _html(results, plots, sections))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _html(results: dict, plots: list[tuple[str, str]], sections: Sequence[tuple[str, str]]) -> str:
    def table(rows: list[tuple[str, Any]]) -> str:
        body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<table>{body}</table>"

    summary = [(k, f"{v['mean']:.4f} ± {v['std']:.4f} (n={v['n']})") for k, v in results["summary"].items()]
    splits = "".join(
        f"<h3>{html.escape(s['name'])}</h3>" + table([(k, f"{v:.4f}" if isinstance(v, float) else v)
                                                      for k, v in s["metrics"].items()]
                                                     + [("videos skipped (missing)", s["skipped_missing"]),
                                                        ("videos failed to decode", s["failed"])])
        for s in results["splits"])
    images = "".join(f"<figure><img src='data:image/png;base64,{png}'><figcaption>{html.escape(title)}</figcaption>"
                     f"</figure>" for title, png in plots)
    extra = "".join(f"<h2>{html.escape(title)}</h2>{part}" for title, part in sections)
    settings = table(sorted((k, v) for k, v in results["config"].items() if k != "dataset")
                     + [(f"dataset.{k}", v) for k, v in results["config"]["dataset"].items()])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(results['name'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:.5em 0}}
th,td{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}}figure{{display:inline-block}}</style>
</head><body><h1>{html.escape(results['name'])}</h1>
<p>Protocol: {html.escape(results['config']['protocol'])}; headline {html.escape(results['headline']['metric'])}:
<b>{results['headline']['mean']:.4f} ± {results['headline']['std']:.4f}</b> over {results['headline']['n']} split(s).</p>
<h2>Summary (mean ± std over splits)</h2>{table(summary)}<h2>Splits</h2>{splits}<h2>Plots</h2>{images}
{extra}<h2>Settings</h2>{settings}</body></html>"""
