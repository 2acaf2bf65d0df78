"""``drift_report_html``: ``GET /drift``'s document as one self-contained HTML page (every window's
verdict, and the reference's histograms against the latest closed window's, as inline SVG)."""

from __future__ import annotations

import html
from typing import Any


def _svg_bars(ref: list[float], cur: list[float] | None, labels: list[str]) -> str:
    """Reference (grey) against current (blue) bars as inline SVG."""
    w, h, n = 320, 90, max(len(ref), 1)
    bw = w / n
    top = max(max(ref or [0]), max(cur or [0]), 1e-9)
    parts = [f'<svg width="{w}" height="{h + 14}" xmlns="http://www.w3.org/2000/svg">']
    for i, r in enumerate(ref):
        rh = h * r / top
        parts.append(f'<rect x="{i * bw:.1f}" y="{h - rh:.1f}" width="{bw * 0.45:.1f}" height="{rh:.1f}" fill="#999"/>')
        if cur is not None and i < len(cur):
            ch = h * cur[i] / top
            parts.append(f'<rect x="{i * bw + bw * 0.45:.1f}" y="{h - ch:.1f}" width="{bw * 0.45:.1f}" height="{ch:.1f}" fill="#36c"/>')
        if i < len(labels):
            parts.append(f'<text x="{i * bw:.1f}" y="{h + 12}" font-size="8">{html.escape(labels[i])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _window_rows(windows: list[dict[str, Any]]) -> str:
    """One table row per window: index, model version, rows, verdict, drifted features."""
    return "".join(
        f"<tr><td>{w['index']}</td><td>{w.get('model_version', '')}</td><td>{w['rows']}</td>"
        f"<td class='{w['verdict']}'>{w['verdict']}</td><td>{html.escape(', '.join(w['drifted_features']))}</td></tr>"
        for w in windows)


def _feature_card(name: str, ref: dict[str, Any], entry: dict[str, Any] | None) -> str:
    """A feature's statistic and histograms (``entry``: its score in the latest window, if any)."""
    if ref["kind"] == "numeric":
        labels = [f"{c:.3g}" for c in ref.get("cuts", [])]
    else:
        labels = [str(c) for c in ref.get("codes", [])] + ["other"]
    source = f", {entry['threshold_source']}" if entry and "threshold_source" in entry else ""
    stat = f"{entry['statistic']} {entry['value']:.4g} (threshold {entry['threshold']:.4g}{source})" if entry else "no window yet"
    flag = " drift" if entry and entry["drift"] else ""
    return (f"<div class='card{flag}'><b>{html.escape(name)}</b> {html.escape(stat)}<br>"
            f"{_svg_bars(ref['probs'], entry['current'] if entry else None, labels)}</div>")


def _prediction_card(ref: dict[str, Any], pred: dict[str, Any] | None) -> str:
    """The model's score histograms (``pred``: the prediction's score in the latest window, if any)."""
    return (f"<div class='card{' drift' if pred and pred['drift'] else ''}'><b>prediction</b> "
            + (f"psi {pred['value']:.4g} (threshold {pred['threshold']:.4g})" if pred else "") + "<br>"
            + _svg_bars(ref["probs"], pred["current"] if pred else None, [f"{c:.2g}" for c in ref.get("cuts", [])])
            + "</div>")


def _thresholds_line(t: dict[str, Any] | None) -> str:
    """How the thresholds were set, in words."""
    if not t:
        return "static thresholds"
    if t.get("mode") != "calibrated":
        return f"static thresholds ({t.get('reason', '')})"
    return (f"thresholds calibrated for a false-alarm rate of {t['false_alarm_rate']:g} per feature and window "
            f"({t['draws']:,} simulated clean windows of {t['window_size']:,} rows)")


def drift_report_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: every window's verdict, and reference vs latest-window histograms."""
    windows = report.get("windows", [])
    ref = report.get("reference", {"features": {}, "prediction": {"probs": [], "cuts": []}})
    last = windows[-1] if windows else None
    cards = [_feature_card(name, r, last["features"].get(name) if last else None)
             for name, r in ref.get("features", {}).items()]
    cards.append(_prediction_card(ref["prediction"], last["prediction"] if last else None))
    return (
        "<!doctype html><meta charset='utf-8'><title>raygbm drift report</title><style>"
        "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px}.drift{color:#c00;border-color:#c00}"
        ".card{display:inline-block;border:1px solid #ccc;margin:4px;padding:6px;vertical-align:top}</style>"
        f"<h1>Drift report</h1><p>model v{html.escape(str(report.get('model_version')))}; window size "
        f"{report.get('window_size')}; {report.get('rows_seen', 0)} rows seen; {report.get('dropped_batches', 0)} "
        f"batches dropped; {html.escape(_thresholds_line(report.get('thresholds')))}. Grey: training reference; "
        "blue: latest closed window.</p>"
        f"<table><tr><th>window</th><th>model</th><th>rows</th><th>verdict</th><th>drifted</th></tr>{_window_rows(windows)}</table>"
        f"<h2>Latest window</h2>{''.join(cards)}\n"
    )
