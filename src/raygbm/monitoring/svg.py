"""The drift report's two charts as inline SVG strings: a trend (values per window, thresholds as steps)
and paired histogram bars (reference against current). Plain string building: no plotting library in
the CLI's path, and the page stays one file."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

Series = tuple[str, Sequence[float | None], str, bool]  # (legend name, one value per window, colour, dashed)
LOG_FLOOR = 1e-12  # a log-scale chart's bottom: p-values below it are drawn on it


def _ticks_linear(lo: float, hi: float) -> list[float]:
    return [lo, (lo + hi) / 2, hi]


def _label(v: float, log: bool) -> str:
    return f"1e{round(math.log10(v))}" if log and v < 0.01 else f"{v:.3g}"


def _range(series: Sequence[Series], log: bool, zero: bool = True) -> tuple[float, float] | None:
    """The y axis' span over every series' values (log: decades, at most 1e-12 to 1; ``zero``: from 0)."""
    values = [v for _, vs, _, _ in series for v in vs if v is not None]
    if log:  # zero and tiny p-values sit on the floor
        values = [max(v, LOG_FLOOR) for v in values] or [LOG_FLOOR]
        return 10.0 ** math.floor(math.log10(min(values))), 10.0 ** max(0, math.ceil(math.log10(max(values))))
    if not values:
        return None
    if not zero:
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 1.0
        return lo - pad, hi + pad
    lo, hi = min(0.0, min(values)), max(values)
    return (lo, hi * 1.1 if hi > 0 else 1.0) if hi > lo else (lo, lo + 1.0)


def _polyline(points: list[tuple[float, float]], colour: str, dashed: bool) -> str:
    if len(points) < 2:
        return ""
    dash = ' stroke-dasharray="5 3"' if dashed else ""
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="{1.2 if dashed else 1.6}"{dash}/>'


def trend_svg(title: str, xs: Sequence[object], series: Sequence[Series], flags: Sequence[bool] | None,
              log: bool = False, width: int = 340, height: int = 160, zero: bool = True) -> str:
    """Values per window (x: the windows in order, labelled by ``xs``): the first series drawn with a point
    per window (red where ``flags`` says drift), dashed series as steps over each window's slot (a
    threshold can differ between windows); None leaves a gap. ``zero``: the y axis starts at 0 (else it
    spans the values)."""
    left, right, top, bottom = 46, 8, 18, 44
    pw, ph = width - left - right, height - top - bottom
    n = max(len(xs), 1)
    slot = pw / n
    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">',
             f'<text x="{left}" y="12" font-size="11" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    span = _range(series, log, zero)
    if span is None:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" font-size="10" text-anchor="middle" fill="#888">'
                     "no scored window</text></svg>")
        return "".join(parts)
    lo, hi = span

    def y_of(v: float) -> float:
        if log:
            v = min(max(v, lo, LOG_FLOOR), hi)
            frac = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        else:
            frac = (v - lo) / (hi - lo)
        return top + ph * (1 - frac)

    ticks = [10.0 ** e for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1, max(1, round(math.log10(hi / lo)) // 3))] \
        if log else _ticks_linear(lo, hi)
    for t in ticks:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y_of(t):.1f}" y2="{y_of(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 3}" y="{y_of(t) + 3:.1f}" font-size="9" text-anchor="end">{_label(t, log)}</text>')
    for i in sorted({0, n // 2, n - 1}) if xs else []:
        parts.append(f'<text x="{left + (i + 0.5) * slot:.1f}" y="{top + ph + 11}" font-size="9" text-anchor="middle">'
                     f"{html.escape(str(xs[i]))}</text>")
    parts.append(f'<text x="{left + pw / 2}" y="{top + ph + 22}" font-size="9" text-anchor="middle" fill="#666">window</text>')
    for name, values, colour, dashed in series:
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(values):
            if v is None:
                runs.append([])
            elif dashed:
                runs[-1] += [(left + i * slot, y_of(v)), (left + (i + 1) * slot, y_of(v))]
            else:
                runs[-1].append((left + (i + 0.5) * slot, y_of(v)))
        parts += [_polyline(run, colour, dashed) for run in runs]
    name, values, colour, _ = series[0]
    for i, v in enumerate(values):
        if v is not None:
            flagged = bool(flags and i < len(flags) and flags[i])
            parts.append(f'<circle cx="{left + (i + 0.5) * slot:.1f}" cy="{y_of(v):.1f}" r="{3.2 if flagged else 2.2}" '
                         f'fill="{"#c62828" if flagged else colour}"><title>window {html.escape(str(xs[i]))}: '
                         f"{html.escape(name)} {v:.4g}{' (drift)' if flagged else ''}</title></circle>")
    parts.append(_legend(series, left, height - 8))
    parts.append("</svg>")
    return "".join(parts)


def _legend(series: Sequence[Series], x: float, y: float) -> str:
    """A line sample and the name of each named series, in a row from ``(x, y)``."""
    parts = []
    for name, _, colour, dashed in series:
        if not name:
            continue
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(f'<line x1="{x}" x2="{x + 16}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="1.6"{dash}/>'
                     f'<text x="{x + 19}" y="{y + 3}" font-size="9">{html.escape(name)}</text>')
        x += 26 + 5.5 * len(name)
    return "".join(parts)


def bars_svg(ref: Sequence[float], cur: Sequence[float] | None, labels: Sequence[str],
             marker: tuple[float, str] | None = None) -> str:
    """Reference (grey) against current (blue) shares per bin, labels slanted under the bars; ``marker``:
    a dashed red line at a position in bins (bin i spans [i, i + 1]) with its label."""
    n = max(len(ref), 1)
    bw = min(max(300 / n, 14), 40)
    left, h, label_h = 36, 90, 70
    w = int(left + bw * n + 10)
    top = max(max(ref or [0]), max(cur or [0]), 1e-9)
    parts = [f'<svg width="{w}" height="{h + label_h + 14}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">',
             f'<line x1="{left}" x2="{w - 10}" y1="{h + 12}" y2="{h + 12}" stroke="#999"/>',
             f'<text x="{left - 3}" y="18" font-size="9" text-anchor="end">{top:.0%}</text>'
             f'<text x="{left - 3}" y="{h + 12}" font-size="9" text-anchor="end">0</text>']
    for i, r in enumerate(ref):
        x = left + i * bw
        rh = h * r / top
        parts.append(f'<rect x="{x + 1:.1f}" y="{h + 12 - rh:.1f}" width="{bw * 0.42:.1f}" height="{rh:.1f}" fill="#9e9e9e">'
                     f"<title>{html.escape(labels[i] if i < len(labels) else '')}: reference {r:.2%}</title></rect>")
        if cur is not None and i < len(cur):
            ch = h * cur[i] / top
            parts.append(f'<rect x="{x + 1 + bw * 0.42:.1f}" y="{h + 12 - ch:.1f}" width="{bw * 0.42:.1f}" height="{ch:.1f}" '
                         f'fill="#3366cc"><title>current {cur[i]:.2%}</title></rect>')
        if i < len(labels):
            text = labels[i] if len(labels[i]) <= 16 else labels[i][:15] + "…"
            lx, ly = x + bw * 0.5, h + 22
            parts.append(f'<text x="{lx:.1f}" y="{ly}" font-size="9" text-anchor="end" transform="rotate(-45 {lx:.1f} {ly})">'
                         f"{html.escape(text)}</text>")
    if marker is not None:
        mx = left + marker[0] * bw
        parts.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="4" y2="{h + 12}" stroke="#c62828" stroke-width="1.5" '
                     f'stroke-dasharray="4 2"/><text x="{mx + 3:.1f}" y="10" font-size="9" fill="#c62828">{html.escape(marker[1])}</text>')
    parts.append("</svg>")
    return "".join(parts)
