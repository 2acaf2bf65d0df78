"""``drift_report_html``: ``GET /drift``'s document as one self-contained HTML page (inline SVG, no script):
the monitor's settings, every kept window (its time span, rows, verdict, drifted features and, when the
document has it, its performance), each feature's statistic over the windows against its threshold (a
categorical feature: its JS distance and its chi-square p-value), the prediction's, the missing-rate checks,
and the reference's histograms against the latest scored window's (category values, not codes, where the
reference carries them; the decision threshold marked on the scores)."""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any

from raygbm.monitoring.svg import bars_svg, trend_svg

MISSING_LABEL = "(missing or unseen)"  # code 0 of a categorical feature without labels in the reference
DRIFT, VALUE, THRESHOLD, ESTIMATED = "#c62828", "#3366cc", "#c62828", "#ef8f00"
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{margin:0 0 .3em}h2{margin-top:1.4em;color:#2a4d8f}"
    "table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #e3e3e3;text-align:left}"
    "th{background:#eef2fa}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    ".drift{color:#c62828;font-weight:600}.ok{color:#2e7d32}.insufficient_data{color:#888}"
    ".card{display:inline-block;border:1px solid #ccc;border-radius:4px;margin:4px;padding:6px 8px;vertical-align:top;"
    "background:#fff}.card.drift{border-color:#c62828;border-width:2px;color:inherit;font-weight:normal}.card.drift>b{color:#c62828}"
    ".meta{color:#555}.small{font-size:.85em;color:#555}td.t{white-space:nowrap}td.w{min-width:10em}table{font-size:.9em}"
)


def _num(v: Any) -> float | None:
    """A finite number from the document, else None (absent, null, not a number)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(v: Any, digits: int = 4) -> str:
    f = _num(v)
    return "-" if f is None else f"{f:.{digits}g}"


def _ts(t: Any, zone: bool = True) -> str:
    """A window timestamp (Unix seconds) as UTC (``zone``: saying so)."""
    f = _num(t)
    fmt = "%Y-%m-%d %H:%M:%S UTC" if zone else "%Y-%m-%d %H:%M:%S"
    return "-" if f is None else datetime.fromtimestamp(f, tz=timezone.utc).strftime(fmt)


def _e(v: Any) -> str:
    return html.escape(str(v))


def category_labels(ref: dict[str, Any]) -> list[str]:
    """A categorical feature's bin labels: its category values (the reference's ``labels``) or, in a
    reference without them, its codes; then "other" (every code the reference does not list)."""
    labels = ref.get("labels") or [MISSING_LABEL if c == 0 else f"code {c}" for c in ref.get("codes", [])]
    return [str(x) for x in labels] + ["other"]


def _bin_labels(ref: dict[str, Any]) -> list[str]:
    if ref.get("kind") == "categorical":
        return category_labels(ref)
    cuts = [_fmt(c, 3) for c in ref.get("cuts", [])]
    if not cuts:
        return ["all"]
    return [f"< {cuts[0]}"] + [f"{a} – {b}" for a, b in zip(cuts, cuts[1:])] + [f"≥ {cuts[-1]}"]


def _series(windows: list[dict[str, Any]], get: Any) -> list[float | None]:
    """One number per window (None where the window has none: not scored, or no such entry)."""
    out = []
    for w in windows:
        try:
            out.append(_num(get(w)))
        except (KeyError, TypeError, AttributeError):
            out.append(None)
    return out


def _flags(windows: list[dict[str, Any]], get: Any) -> list[bool]:
    out = []
    for w in windows:
        try:
            out.append(bool(get(w)["drift"]))
        except (KeyError, TypeError):
            out.append(False)
    return out


def _threshold_of(entry: dict[str, Any] | None, statistic: str) -> Any:
    """The threshold an entry holds ``statistic`` to (a chi-square-scored entry also holds its JS distance
    to ``js_threshold``), or None."""
    if not entry:
        return None
    if entry.get("statistic") == statistic:
        return entry.get("threshold")
    return entry.get("js_threshold") if statistic == "js_distance" else None


def _feature_trends(name: str, ref: dict[str, Any], windows: list[dict[str, Any]]) -> str:
    """A feature's statistic(s) over the windows, each against its threshold."""
    xs = [w.get("index", i) for i, w in enumerate(windows)]

    def entry(w: dict[str, Any]) -> Any:
        return (w.get("features") or {}).get(name)

    flags = _flags(windows, entry)
    if ref.get("kind") != "categorical":
        return trend_svg("PSI", xs, [("PSI", _series(windows, lambda w: entry(w)["value"]), VALUE, False),
                                     ("threshold", _series(windows, lambda w: _threshold_of(entry(w), "psi")), THRESHOLD, True)],
                         flags)
    js = trend_svg("JS distance", xs, [
        ("JS distance", _series(windows, lambda w: entry(w)["js_distance"]), VALUE, False),
        ("threshold", _series(windows, lambda w: _threshold_of(entry(w), "js_distance")), THRESHOLD, True)], flags)
    pvalue = trend_svg("chi-square p-value (log scale)", xs, [
        ("p-value", _series(windows, lambda w: entry(w)["value"] if entry(w)["statistic"] == "chi2_pvalue"
                            else entry(w).get("chi2_pvalue")), VALUE, False),
        ("threshold", _series(windows, lambda w: _threshold_of(entry(w), "chi2_pvalue")), THRESHOLD, True)], flags,
                       log=True)
    return js + pvalue


def _latest_line(kind: str, entry: dict[str, Any] | None) -> str:
    """The latest scored window's numbers for one feature, both statistics for a categorical one."""
    if not entry:
        return "not scored yet"
    src = f", {entry['threshold_source']}" if "threshold_source" in entry else ""
    if kind != "categorical":
        return f"PSI {_fmt(entry.get('value'))} (threshold {_fmt(entry.get('threshold'))}{src})"
    by_pvalue = entry.get("statistic") == "chi2_pvalue"
    p = entry.get("value") if by_pvalue else entry.get("chi2_pvalue")
    js_thr, p_thr = _threshold_of(entry, "js_distance"), _threshold_of(entry, "chi2_pvalue")
    rule = "drift when p < its threshold and JS > its threshold" if by_pvalue else "drift when JS > its threshold; p for information"
    return (f"JS distance {_fmt(entry.get('js_distance'))}" + (f" (threshold {_fmt(js_thr)})" if js_thr is not None else "")
            + f"; chi-square p-value {_fmt(p)}" + (f" (threshold {_fmt(p_thr)})" if p_thr is not None else "")
            + f"{src}; {rule}")


def _feature_card(name: str, ref: dict[str, Any], windows: list[dict[str, Any]], latest: dict[str, Any] | None) -> str:
    entry = (latest.get("features") or {}).get(name) if latest else None
    drift = bool(entry and entry.get("drift"))
    ever = sum(_flags(windows, lambda w: (w.get("features") or {}).get(name)))
    kind = ref.get("kind", "numeric")
    return (f"<div class='card{' drift' if drift else ''}'><b>{_e(name)}</b> <span class='small'>{_e(kind)}; drifted in "
            f"{ever} of {len(windows)} windows</span><br><span class='small'>latest: {_e(_latest_line(kind, entry))}</span><br>"
            f"{_feature_trends(name, ref, windows)}<br>"
            f"{bars_svg(ref.get('probs', []), entry.get('current') if entry else None, _bin_labels(ref))}</div>")


def _prediction_card(ref: dict[str, Any], windows: list[dict[str, Any]], latest: dict[str, Any] | None) -> str:
    """The model's score: its PSI over the windows, the histograms, and the decision threshold."""
    pred = latest.get("prediction") if latest else None
    xs = [w.get("index", i) for i, w in enumerate(windows)]
    trend = trend_svg("PSI", xs, [("PSI", _series(windows, lambda w: w["prediction"]["value"]), VALUE, False),
                                  ("threshold", _series(windows, lambda w: w["prediction"]["threshold"]), THRESHOLD, True)],
                      _flags(windows, lambda w: w["prediction"]))
    cut = _num(ref.get("decision_threshold"))
    marker = _marker_position(ref.get("cuts", []), cut) if cut is not None else None
    decision = f"; decision threshold {_fmt(cut)} (binary: scores at or above it predict the positive class)" if cut is not None else ""
    return (f"<div class='card{' drift' if pred and pred.get('drift') else ''}'><b>prediction (the model's score)</b><br>"
            f"<span class='small'>latest: {_e(_latest_line('numeric', pred))}{_e(decision)}</span><br>{trend}<br>"
            + bars_svg(ref.get("probs", []), pred.get("current") if pred else None, _bin_labels(ref),
                       marker=(marker, f"threshold {_fmt(cut, 3)}") if marker is not None else None) + "</div>")


def _marker_position(cuts: list[float], value: float) -> float:
    """Where ``value`` falls on the histogram's axis, in bins (bin i spans [i, i+1]): interpolated within
    an inner bin; the outer bins, unbounded, put it at their inner edge's side."""
    cuts = [c for c in (_num(x) for x in cuts) if c is not None]
    for i, c in enumerate(cuts):
        if value < c:
            if i == 0:
                return 0.5
            lo = cuts[i - 1]
            return i + (value - lo) / (c - lo) if c > lo else float(i)
    return len(cuts) + 0.5


def _missing_section(windows: list[dict[str, Any]], latest: dict[str, Any] | None) -> str:
    """Each raw field's missing rate over the windows, against the band the reference rate ± its threshold
    allows (the reference rate is the window's rate minus its delta)."""
    names = list(dict.fromkeys(n for w in windows for n in (w.get("missing") or {})))
    if not names:
        return "<p class='meta'>No missing-rate checks (no window scored one).</p>"
    xs = [w.get("index", i) for i, w in enumerate(windows)]
    cards, never = [], []
    for name in names:
        def entry(w: dict[str, Any], name: str = name) -> Any:
            return (w.get("missing") or {}).get(name)

        ref = _series(windows, lambda w: entry(w)["rate"] - entry(w)["value"])
        rates = _series(windows, lambda w: entry(w)["rate"])
        if not any(ref) and not any(rates):  # never missing, in training or served: one line for all of them
            never.append(name)
            continue
        thr = _series(windows, lambda w: entry(w)["threshold"])
        hi = [r + t if r is not None and t is not None else None for r, t in zip(ref, thr)]
        lo = [max(r - t, 0.0) if r is not None and t is not None else None for r, t in zip(ref, thr)]
        chart = trend_svg("missing rate", xs, [("window rate", rates, VALUE, False),
                                               ("reference", ref, "#777", True), ("allowed band", hi, THRESHOLD, True),
                                               ("", lo, THRESHOLD, True)], _flags(windows, entry))
        e = entry(latest) if latest else None
        line = (f"latest: rate {_fmt(e.get('rate'))}, change {_fmt(e.get('value'))} (threshold ±{_fmt(e.get('threshold'))}"
                + (f", {e['threshold_source']}" if "threshold_source" in e else "") + ")") if e else "latest: not scored"
        cards.append(f"<div class='card{' drift' if e and e.get('drift') else ''}'><b>{_e(name)}</b><br>"
                     f"<span class='small'>{_e(line)}</span><br>{chart}</div>")
    none = f"<p class='meta'>Never missing (reference and every window): {_e(', '.join(never))}.</p>" if never else ""
    return none + "".join(cards)


def _performance_cells(perf: Any) -> str:
    """A window's ``performance`` entry as three cells: labelled rows, realized and estimated metrics."""
    if not isinstance(perf, dict):
        return "<td></td><td></td><td></td>"
    cells = [f"<td class='num'>{_fmt(perf.get('labelled_rows'), 9)}</td>"]
    for kind in ("realized", "estimated"):
        values = perf.get(kind)
        values = values if isinstance(values, dict) else {}
        cells.append("<td class='t'>" + "<br>".join(f"{_e(k)} {_fmt(v)}" for k, v in values.items()) + "</td>")
    return "".join(cells)


def _windows_table(windows: list[dict[str, Any]]) -> str:
    """One row per kept window, oldest first."""
    perf = any("performance" in w for w in windows)
    head = ["window", "model", "from (UTC)", "to (UTC)", "rows", "closed by", "verdict", "prediction PSI", "drifted"]
    rows = []
    for w in windows:
        verdict = str(w.get("verdict", ""))
        alert = " <span class='drift'>ALERT</span>" if w.get("alert") else ""
        pred = w.get("prediction") or {}
        drifted = [str(x) for x in w.get("drifted_features") or []] + (["prediction"] if pred.get("drift") else [])
        rows.append(
            f"<tr><td class='num'>{_e(w.get('index', ''))}</td><td>{_e(w.get('model_version', ''))}</td>"
            f"<td class='t'>{_ts(w.get('first_ts'), False)}</td><td class='t'>{_ts(w.get('last_ts'), False)}</td><td class='num'>{_fmt(w.get('rows'), 9)}</td>"
            f"<td>{_e(w.get('closed_by', ''))}</td><td class='{_e(verdict)}'>{_e(verdict)}{alert}</td>"
            f"<td class='num'>{_fmt(pred.get('value'))}</td><td class='w'>{_e(', '.join(drifted))}</td>"
            + (_performance_cells(w.get("performance")) if perf else "") + "</tr>")
    head += ["labelled rows", "realized", "estimated"] if perf else []
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


def _performance_section(windows: list[dict[str, Any]]) -> str:
    """Realized (labels arrived) against estimated performance per metric over the windows, when the
    document carries them."""
    if not any(isinstance(w.get("performance"), dict) for w in windows):
        return ""
    xs = [w.get("index", i) for i, w in enumerate(windows)]
    metrics = list(dict.fromkeys(m for w in windows if isinstance(w.get("performance"), dict)
                                 for kind in ("realized", "estimated") for m in (w["performance"].get(kind) or {})))
    charts = [trend_svg(m, xs, [("realized", _series(windows, lambda w, m=m: w["performance"]["realized"][m]), VALUE, False),
                                ("estimated", _series(windows, lambda w, m=m: w["performance"]["estimated"][m]), ESTIMATED, True)],
                        None, zero=False) for m in metrics]
    return ("<h2>Performance</h2><p class='meta'>Realized: on the rows whose labels have arrived; estimated: from the "
            "scores alone.</p>" + "".join(f"<div class='card'>{c}</div>" for c in charts))


def _thresholds_line(t: dict[str, Any] | None) -> str:
    """How the thresholds were set, in words."""
    if not t:
        return "static thresholds"
    if t.get("mode") != "calibrated":
        return f"static thresholds ({t.get('reason', '')})"
    return (f"thresholds calibrated for a false-alarm rate of {t['false_alarm_rate']:g} per feature and window "
            f"({t['draws']:,} simulated clean windows of {t['window_size']:,} rows)")


def _summary(report: dict[str, Any], windows: list[dict[str, Any]]) -> str:
    span = f"from {_ts(windows[0].get('first_ts'))} to {_ts(windows[-1].get('last_ts'))}" if windows else "none closed yet"
    drifted = sum(w.get("verdict") == "drift" for w in windows)
    seconds = f", or {report['window_seconds']} s" if report.get("window_seconds") else ""
    alert = report.get("alert_after")
    log = ("; windows logged to disk" if report.get("logging") else "") + (
        f"; <span class='drift'>log error: {_e(report['log_error'])}</span>" if report.get("log_error") else "")
    return (f"<p class='meta'>model v{_e(report.get('model_version'))}; windows of {_e(report.get('window_size'))} rows{_e(seconds)}; "
            f"{len(windows)} kept ({drifted} with drift), {span}; {_fmt(report.get('rows_seen', 0), 12)} rows seen, "
            f"{_fmt(report.get('open_window_rows', 0), 12)} in the open window; {_fmt(report.get('dropped_batches', 0), 12)} "
            f"batches dropped; {_e(_thresholds_line(report.get('thresholds')))}"
            + (f"; alert when {alert.get('m')} of the last {alert.get('n')} windows drift" if isinstance(alert, dict) else "")
            + f"{log}.</p>")


def drift_report_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: the windows, the trends, the missing-rate checks and the histograms."""
    windows = [w for w in report.get("windows", []) if isinstance(w, dict)]
    ref = report.get("reference") or {}
    scored = [w for w in windows if w.get("prediction")]
    latest = scored[-1] if scored else None
    features = ref.get("features") or {}
    order = sorted(features, key=lambda n: -sum(_flags(windows, lambda w: (w.get("features") or {}).get(n))))
    cards = [_feature_card(name, features[name], windows, latest) for name in order]
    legend = ("Trends: the statistic per window (blue; red points: drift) against its threshold (red dashes). Histograms: "
              "training reference (grey) against the latest scored window"
              + (f" ({latest.get('index')}, {_ts(latest.get('first_ts'))} – {_ts(latest.get('last_ts'))})" if latest else "")
              + " (blue).")
    return (
        f"<!doctype html><html lang='en'><meta charset='utf-8'><title>raygbm drift report</title><style>{_STYLE}</style>"
        f"<h1>Drift report</h1>{_summary(report, windows)}<h2>Windows</h2>{_windows_table(windows)}"
        f"{_performance_section(windows)}<h2>Prediction</h2><p class='meta'>{_e(legend)}</p>"
        f"{_prediction_card(ref.get('prediction') or {}, windows, latest)}"
        f"<h2>Features</h2><p class='meta'>Most often drifted first.</p>{''.join(cards)}"
        f"<h2>Missing values</h2>{_missing_section(windows, latest)}\n</html>\n"
    )
