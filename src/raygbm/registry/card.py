"""The model card: Markdown (``model_card``: logged to MLflow, read in a terminal or on a code host) and
the same card as one self-contained HTML page (``card_html``: tables, lists and code as HTML, the plots
inline as base64 PNG), converted by a small Markdown subset renderer that covers what ``model_card``
writes (headings, lists, tables, fenced code, bold, inline code and images)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from raygbm.registry.evaluate import Evaluation

# The captions of ``raygbm.registry.plots``' files (the images' alt text in Markdown).
PLOT_TITLES = {
    "roc.png": "ROC curve", "pr.png": "Precision-recall curve", "calibration.png": "Calibration curve",
    "score_histogram.png": "Score histogram per class, with the decision threshold",
    "confusion.png": "Confusion matrix", "residuals.png": "Residuals", "importance.png": "Gain importance",
    "shap.png": "SHAP summary (LightGBM pred_contrib)", "tuning.png": "Tuning history (chosen trial marked)",
}

def _selection_lines(validation: dict[str, Any] | None, refit: dict[str, Any] | None,
                     comparison: dict[str, Any] | None) -> list[str]:
    """The card's "Selection and refit" section."""
    lines = ["", "## Selection and refit", ""]
    if validation:
        how = f"{validation['folds']}-fold CV on train + validation" if validation["scheme"] == "cv" else "holdout (validation split)"
        spread = f" ± {validation['score_std']:.4g} over the folds" if "score_std" in validation else ""
        lines.append(f"- Scored by {how} ({validation['reason']}): {validation['metric']} "
                     f"{validation['score']:.6g}{spread}" if validation.get("score") is not None else f"- Scored by {how}")
        folds = validation.get("fold_best_iterations")
        lines.append(f"- Best iteration: {validation['best_iteration']}"
                     + (f" (rounded mean of the folds' {', '.join(map(str, folds))})" if folds else ""))
    if comparison and comparison.get("tuned_score") is not None and comparison.get("defaults_score") is not None:
        lines.append(f"- Against LightGBM's defaults by the same scheme: tuned {comparison['tuned_score']:.6g}, "
                     f"defaults {comparison['defaults_score']:.6g}; kept **{comparison['kept']}**")
    if refit and refit.get("ensemble"):
        lines.append(f"- The average of the {refit['ensemble']} fold models (one LightGBM model; rounds "
                     f"{', '.join(map(str, refit['fold_rounds']))}), trained on {' + '.join(refit['splits'])} "
                     f"({refit['rows']:,} rows); the test split was not used")
    elif refit:
        lines.append(f"- Refit on {' + '.join(refit['splits'])} ({refit['rows']:,} rows): {refit['rounds']} rounds = "
                     f"best iteration {refit['selection_best_iteration']} × {refit['rounds_scale']:g}; the test split "
                     "was not used")
    else:
        lines.append("- No refit: the registered model is the one fitted on train and early-stopped on validation")
    return lines


def model_card(*, name: str, version: str | None, ev: Evaluation, params: dict[str, Any], best_iteration: int,
               data_report: dict[str, Any], tuning: dict[str, Any] | None, gate: dict[str, Any] | None,
               plots: list[str], selection: dict[str, Any] | None, comparison: dict[str, Any] | None = None,
               validation: dict[str, Any] | None = None, refit: dict[str, Any] | None = None) -> str:
    """Markdown model card tying the data report, the parameters and the metrics together."""
    lines = [f"# Model card: {name}" + (f" v{version}" if version else ""), ""]
    lines += [f"- Task: **{ev.task}**; gate metric: **{ev.gate_metric}**",
              f"- Boosting rounds: {best_iteration}" + (" (refit on train + validation)" if refit else "")]
    if gate:
        lines.append(f"- Champion decision: **{gate.get('decision')}**: {gate.get('reason')}")
    lines += ["", "## Test metrics", "", "| metric | value |", "|---|---|"]
    for k, v in ev.metrics.items():
        if k != "confusion_matrix":
            lines.append(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |")
    if "confusion_matrix" in ev.metrics:
        lines += ["", "Confusion matrix (rows: true class):", "", "```",
                  *(" ".join(f"{c:>7d}" for c in row) for row in ev.metrics["confusion_matrix"]), "```"]
    lines += ["", "## Data", ""]
    rows = data_report.get("rows_out", {})
    lines.append(f"- Source: `{data_report.get('source')}`; rows read: {data_report.get('rows_read', '?'):,}" if isinstance(
        data_report.get("rows_read"), int) else f"- Source: `{data_report.get('source')}`")
    lines.append("- Splits: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    lines += ["", "## Parameters", "", "```json", json.dumps(params, indent=1, sort_keys=True, default=str), "```"]
    if tuning:
        lines += ["", "## Tuning", "",
                  f"- {len(tuning['trials'])} trials ({tuning['trial_mode']}), best validation {tuning['metric']} "
                  f"{tuning['best_score']:.6g}; {sum(t['status'] == 'stopped early' for t in tuning['trials'])} stopped early by ASHA",
                  "- Chosen: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in tuning.get("best_params", {}).items())]
    if validation or refit or comparison:
        lines += _selection_lines(validation, refit, comparison)
    if selection:
        lines += ["", "## Feature selection", "", f"- Dropped (gain share < {selection['min_gain_share']}): "
                  + (", ".join(selection["dropped"]) or "none")]
    lines += ["", "## Importance (top 15 by gain)", "", "| feature | gain | permutation | mean abs SHAP |", "|---|---|---|---|"]
    gain, perm, shap = ev.importance["gain"], ev.importance["permutation"], ev.importance.get("shap", {})
    for k, v in sorted(gain.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"| {k} | {v:,.0f} | {perm.get(k, float('nan')):.4g} | {shap.get(k, float('nan')):.4g} |"
                     if v >= 1000 else f"| {k} | {v:.4g} | {perm.get(k, float('nan')):.4g} | {shap.get(k, float('nan')):.4g} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{PLOT_TITLES.get(p, p)}](plots/{p})" for p in plots]
    return "\n".join(lines) + "\n"




_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")
_RULE = re.compile(r"^\|[\s:|-]+\|$")  # a table's header separator, |---|---|
_NUMBER = re.compile(r"^-?[\d,.]+(e[+-]?\d+)?%?$|^nan$")

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:62em;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
    "h1{border-bottom:2px solid #36c;padding-bottom:.2em}h2{margin-top:1.6em;color:#2a4d8f}"
    "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccd;padding:3px 10px}"
    "th{background:#eef2fa;text-align:left}tr:nth-child(even) td{background:#f8f9fc}td.num{text-align:right;"
    "font-variant-numeric:tabular-nums}pre{background:#f4f4f4;padding:.6em;overflow-x:auto;font-size:.85em}"
    "code{background:#f4f4f4;padding:0 .2em}.plots{display:flex;flex-wrap:wrap;gap:12px}"
    "figure{margin:0;border:1px solid #ddd;padding:6px;background:#fff}figcaption{font-size:.85em;color:#555}"
)


def _inline(text: str) -> str:
    """Escaped text with ``**bold**`` and `` `code` ``."""
    return _BOLD.sub(r"<strong>\1</strong>", _CODE.sub(r"<code>\1</code>", html.escape(text)))


def _image(alt: str, src: str, base: Path | None) -> str:
    """A figure: the PNG inline when it is a file under ``base``, else a link to ``src``."""
    uri = html.escape(src)
    if base is not None:
        path = (base / src).resolve()
        if path.suffix == ".png" and path.is_file() and path.is_relative_to(base.resolve()):
            uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows if not _RULE.match(r.strip())]
    head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td class='num'>{_inline(c)}</td>" if _NUMBER.match(c) else f"<td>{_inline(c)}</td>"
                                    for c in row) + "</tr>" for row in cells[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _block(kind: str, lines: list[str], base: Path | None) -> str:
    """One block of consecutive lines of the same kind as HTML."""
    if kind == "table":
        return _table(lines)
    if kind == "list":
        return "<ul>" + "".join(f"<li>{_inline(l[2:])}</li>" for l in lines) + "</ul>"
    if kind == "images":
        return "<div class='plots'>" + "".join(_image(*_IMAGE.match(l).groups(), base) for l in lines) + "</div>"
    if kind == "heading":
        level = min(len(lines[0]) - len(lines[0].lstrip("#")), 6)
        return f"<h{level}>{_inline(lines[0].lstrip('#').strip())}</h{level}>"
    return "<p>" + " ".join(_inline(l) for l in lines) + "</p>"


def _kind(line: str) -> str:
    if line.startswith("#"):
        return "heading"
    if line.startswith("|"):
        return "table"
    if line.startswith("- "):
        return "list"
    return "images" if _IMAGE.match(line) else "text"


def card_html(markdown: str, base: Path | None = None) -> str:
    """The card as one self-contained HTML page; images under ``base`` (the report folder) inline."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):  # fenced code, verbatim up to the closing fence
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1 : end])) + "</code></pre>")
            i = end + 1
            continue
        if not line.strip():
            i += 1
            continue
        kind, j = _kind(line), i + 1
        while kind != "heading" and j < len(lines) and lines[j].strip() and not lines[j].startswith("```") and _kind(lines[j]) == kind:
            j += 1
        out.append(_block(kind, lines[i:j], base))
        i = j
    title = next((l.lstrip("#").strip() for l in lines if l.startswith("# ")), "model card")
    return (f"<!doctype html><html lang='en'><meta charset='utf-8'><title>raygbm {html.escape(title)}</title>"
            f"<style>{_STYLE}</style>\n" + "\n".join(out) + "\n</html>\n")
