"""Which threshold each statistic of a window is held to, and where it came from: a per-feature override
(``monitor.thresholds``), the threshold calibrated under no drift (``calibration``), or the static one
(``monitor.psi``, ...).

A reference written with calibration (``reference_profile`` with held-out rows) carries the held-out
counts and the thresholds calibrated at registration for ``monitor.window_size`` rows. When the serving
config asks for another window size, false-alarm rate or number of draws, the thresholds are
recalibrated here from the same held-out counts (same seed: identical to what registration computes for
the same settings; under a second for a typical model). A window closed by time with fewer rows is held
to thresholds recalibrated at its own row count, since noise grows as windows shrink. A reference
without calibration (bundles written before it) is scored with the static thresholds.
"""

from __future__ import annotations

from typing import Any

from raygbm.config import MonitorConfig
from raygbm.monitoring.calibration import ESTIMATOR, FLOORS, calibrate, feature_statistic

CALIBRATED, STATIC, OVERRIDE = "calibrated", "static", "override"
_CACHED_SIZES = 8  # row counts whose recalibrated thresholds are kept (windows closed by time vary)


class Thresholds:
    """The thresholds of one model's windows under one monitor config."""

    def __init__(self, reference: dict[str, Any], config: MonitorConfig):
        self.config = config
        self.stored = reference.get("calibration")
        self.holdout = reference.get("holdout")
        self.reference = reference
        calibratable = self.stored is not None and self.holdout is not None
        self.mode = CALIBRATED if config.thresholds_mode == CALIBRATED and calibratable else STATIC
        self._by_rows: dict[int, dict[str, Any]] = {}
        if self.mode == CALIBRATED and self._stored_fits():
            self._by_rows[config.window_size] = self.stored["thresholds"]

    def _stored_fits(self) -> bool:
        s = self.stored
        return (s["window_size"] == self.config.window_size and s["false_alarm_rate"] == self.config.false_alarm_rate
                and s["draws"] == self.config.calibration_draws)

    def calibrated(self, rows: int) -> dict[str, Any] | None:
        """Calibrated thresholds for windows of ``rows`` rows (None in static mode)."""
        if self.mode != CALIBRATED:
            return None
        rows = max(int(rows), 1)
        if rows not in self._by_rows:
            if len(self._by_rows) >= _CACHED_SIZES:
                self._by_rows.pop(next(k for k in self._by_rows if k != self.config.window_size))
            self._by_rows[rows] = calibrate(self.reference, self.holdout, rows, self.config.false_alarm_rate,
                                            self.config.calibration_draws, int(self.stored.get("seed", 0)))
        return self._by_rows[rows]

    def static(self, name: str, statistic: str) -> tuple[float, str]:
        """A statistic's override for ``name``, else the config's static value."""
        per = self.config.thresholds.get(name, {})
        if statistic in per:
            return float(per[statistic]), OVERRIDE
        return float(getattr(self.config, statistic)), STATIC

    def feature(self, name: str, kind: str, rows: int) -> tuple[str, dict[str, float], str]:
        """How a feature is scored: ``("psi" | "chi2_pvalue+js" | "js_distance", thresholds, source)``.

        An override of a statistic wins over calibration; a categorical feature with an overridden
        p-value keeps the static rule (p-value and JS distance both)."""
        per = self.config.thresholds.get(name, {})
        cal = (self.calibrated(rows) or {}).get("features", {}).get(name)
        if kind == "numeric":
            if cal is None or "psi" in per:
                value, source = self.static(name, "psi")
                return "psi", {"psi": value}, source
            return "psi", {"psi": cal["psi"]}, CALIBRATED
        if cal is None or "chi2_pvalue" in per:
            (p, p_src), (js, js_src) = self.static(name, "chi2_pvalue"), self.static(name, "js_distance")
            return "chi2_pvalue+js", {"chi2_pvalue": p, "js_distance": js}, OVERRIDE if OVERRIDE in (p_src, js_src) else STATIC
        if "js_distance" in per:
            return "js_distance", {"js_distance": float(per["js_distance"])}, OVERRIDE
        return "js_distance", {"js_distance": cal[feature_statistic(kind)]}, CALIBRATED

    def prediction(self, rows: int) -> tuple[float, str]:
        cal = self.calibrated(rows)
        return (cal["prediction"]["psi"], CALIBRATED) if cal else (self.config.prediction_psi, STATIC)

    def missing(self, name: str, rows: int) -> tuple[float, str]:
        cal = (self.calibrated(rows) or {}).get("missing", {}).get(name)
        if cal is None or "missing_rate_delta" in self.config.thresholds.get(name, {}):
            return self.static(name, "missing_rate_delta")
        return cal["missing_rate_delta"], CALIBRATED

    def describe(self) -> dict[str, Any]:
        """How the thresholds were set, for ``GET /drift``."""
        if self.mode == STATIC:
            why = ("monitor.thresholds_mode is static" if self.config.thresholds_mode == STATIC
                   else "the model's reference has no calibration (registered before it)")
            return {"mode": STATIC, "reason": why}
        s = self.stored
        return {"mode": CALIBRATED, "false_alarm_rate": self.config.false_alarm_rate,
                "window_size": self.config.window_size, "draws": self.config.calibration_draws,
                "estimator": s.get("estimator", ESTIMATOR), "floors": s.get("floors", FLOORS),
                "calibrated_at": "registration" if self._stored_fits() else "deploy",
                "held_out": {k: v for k, v in self.holdout.items() if k in ("source", "rows")},
                "overrides": sorted(self.config.thresholds)}
