"""Model quality: `raygbm run` with the default config against plain LightGBM, on the same rows, in one run.

    python bench/quality.py [--quick] [--min-seeds 5] [--max-seeds 30] [--only breast_cancer,titanic] [--big-rows 120000]

For each dataset, ours is ``run_pipeline`` (what ``raygbm run`` runs) with the default config, pointed at
a fresh temporary RAYGBM_HOME; the only settings given are the ones a user must give (the label, an id
column to drop, the time column of a time split). The baseline is plain ``LGBMClassifier()`` /
``LGBMRegressor()`` fitted on every labelled non-test row (train + validation, as our split made them:
the bench recomputes the split with ``raygbm.data.split`` and checks the test rows are the same), string
columns as pandas categories, missing values left to LightGBM. Both are scored on the same test rows.

Datasets (``bench/corpus.py``): real ones that ship inside installed packages, in the column types their
users hold: scikit-learn's bundled breast_cancer, diabetes, digits and wine; the full OpenML datasets it
ships as test fixtures, Titanic, kr-vs-kp (t/f attributes as booleans), cpu and glass2; palmerpenguins
(pandas categoricals, missing values, a categorical label); statsmodels' fair (nullable integer codes),
randhie (booleans, a count), anes96 (integer codes and a categorical) and macrodata (a date column, time
split); plus `raygbm generate` data with a time split whose scoring period is shifted (the generator's drift
from 85% of the rows on: numeric means moved 1.5 standard deviations, a categorical's frequencies
reversed), binary and regression. The small sets are repeated over split seeds; each dataset's delta is its mean
over seeds, with its standard error. Seeds are added (from ``--min-seeds`` up to ``--max-seeds``) until
the verdict against the tolerance cannot be noise: the mean ± 2 standard errors lies wholly above or wholly
below -0.001 (so a dataset whose runs all land near the same delta stops early, and a noisy one such as
breast_cancer, 85 test rows, keeps going).

Delta, positive when raygbm is better: test AUC difference for classification (one-vs-rest macro AUC
for multiclass), relative RMSE difference ``(plain − ours) / plain`` for regression. Ends with

    RESULT worst_delta=<lowest dataset delta> mean_delta=<mean of the dataset deltas> datasets=<n> ...

The goal: worst_delta >= -0.001 and mean_delta >= 0.0001. ``--quick``: 2 to 4 seeds, the binary
generated set only, at 100k rows.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpus import DatasetSpec, datasets  # noqa: E402

# ------------------------------------------------------------------------------------------ one run


def test_mask(table: pa.Table, cfg: Any) -> np.ndarray:
    """Which labelled rows our split puts in test (the same functions preprocess calls, all columns hashed)."""
    from raygbm.data.split import TEST, assign_split, row_hash, time_cutoffs, time_values

    cutoffs = time_cutoffs(time_values(table.column(cfg.split.time)), cfg.split) if cfg.split.time else None
    return assign_split(table, cfg.split, row_hashes=row_hash(table, table.column_names), cutoffs=cutoffs) == TEST


def metric(task: str, y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import mean_squared_error, roc_auc_score

    if task == "binary":
        return float(roc_auc_score(y, p))
    if task == "multiclass":
        return float(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    return float(np.sqrt(mean_squared_error(y, p)))


def delta(task: str, ours: float, plain: float) -> float:
    """Positive when ours is better."""
    return (plain - ours) / plain if task == "regression" else ours - plain


def plain_scores(table: pa.Table, spec: DatasetSpec, test: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """Plain LGBMClassifier() / LGBMRegressor() on the non-test rows, scored on the test rows."""
    import pandas as pd
    from lightgbm import LGBMClassifier, LGBMRegressor

    df = table.drop_columns([spec.label, *[c for c in spec.not_features if c in table.column_names]]).to_pandas()
    for c in df.columns:
        if not pd.api.types.is_numeric_dtype(df[c]):
            df[c] = df[c].astype("category")
    model = (LGBMRegressor if task == "regression" else LGBMClassifier)(verbose=-1)
    model.fit(df[~test], y[~test])
    if task == "regression":
        return model.predict(df[test])
    proba = model.predict_proba(df[test])
    return proba[:, 1] if task == "binary" else proba


def _score(spec: DatasetSpec, cfg: Any, labelled: pa.Table, test: np.ndarray) -> tuple[str, np.ndarray, float, float, Any]:
    """One ``run_pipeline`` of ``cfg``: (task, encoded labels, test metric, wall seconds, outcome)."""
    from raygbm.pipeline import run_pipeline
    from raygbm.registry.bundle import Bundle
    from raygbm.registry.store import Registry, local_bundle

    t = time.perf_counter()
    outcome, _ = run_pipeline(cfg)
    wall = time.perf_counter() - t
    ref, path = local_bundle(Registry(cfg.registry), outcome.version)
    bundle = Bundle.load(path, ref.tags.get("manifest_sha256"))
    assert int(test.sum()) == outcome.metrics["test_rows"], "the bench's test rows are not the pipeline's"
    feats = bundle.features(labelled)  # every row's label encoded as the model encodes it
    y = np.asarray(feats.column(spec.label))
    ours = metric(bundle.task, y[test], bundle.scores(feats.filter(pa.array(test))))
    if bundle.task == "binary":  # the same rows and model as the pipeline's own test evaluation
        assert abs(ours - outcome.metrics["roc_auc"]) < 1e-9, (ours, outcome.metrics["roc_auc"])
    return bundle.task, y, ours, wall, (outcome, bundle, feats.filter(pa.array(test)))


def one_row_latency_us(bundle: Any, feats: pa.Table, calls: int = 300) -> float:
    """Median time of scoring one row as the endpoint does (one thread), in microseconds."""
    from raygbm.registry.evaluate import features_matrix

    X = features_matrix(bundle.booster, feats.slice(0, 1))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        bundle.booster.predict(X, num_threads=1)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def run_once(spec: DatasetSpec, table: pa.Table, seed: int, work: Path, extra: list[str],
             variants: dict[str, list[str]]) -> dict[str, Any]:
    """Our pipeline and the plain model on one split; both scored on the same test rows. Each variant then
    runs in the same home (the data stage and the search are reused: only training and registration
    differ) and is scored on the same rows: a paired comparison with the default."""
    import json

    from raygbm.config import load_config

    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    pq.write_table(table, data / "part-0.parquet")
    home = work / f"home-{spec.name}-{seed}"  # never reused: MLflow caches a store per URI
    os.environ["RAYGBM_HOME"] = str(home)
    given = {"data.source": str(data), "data.label": spec.label}
    cfg = load_config(None, [f"split.seed={seed}", *spec.sets, *extra], given)
    labelled = table.filter(table.column(spec.label).is_valid())
    test = test_mask(labelled, cfg)
    task, y, ours, ours_s, (outcome, bundle, test_feats) = _score(spec, cfg, labelled, test)
    t = time.perf_counter()
    plain = metric(task, y[test], plain_scores(labelled, spec, test, y, task))
    plain_s = time.perf_counter() - t
    latency = one_row_latency_us(bundle, test_feats)
    out_variants = {}
    for name, sets in variants.items():
        vcfg = load_config(None, [f"split.seed={seed}", *spec.sets, *extra, *sets], given)
        _, _, v_ours, v_s, (_, v_bundle, _) = _score(spec, vcfg, labelled, test)
        out_variants[name] = {"ours": v_ours, "delta": delta(task, v_ours, plain), "ours_s": v_s,
                              "latency_us": one_row_latency_us(v_bundle, test_feats)}
    sel = outcome.report_dir / "model_selection.json"
    chosen = json.loads(sel.read_text()) if sel.exists() else {}
    cmp_file = outcome.report_dir / "defaults_comparison.json"
    comparison = json.loads(cmp_file.read_text()) if cmp_file.exists() else {}
    kept = comparison.get("kept", "tuned")
    shutil.rmtree(home, ignore_errors=True)
    return {"task": task, "ours": ours, "plain": plain, "delta": delta(task, ours, plain), "ours_s": ours_s,
            "plain_s": plain_s, "kept": kept, "scheme": (chosen.get("validation") or {}).get("scheme"),
            "rounds": outcome.params.get("num_boost_round"), "rows": labelled.num_rows, "test_rows": int(test.sum()),
            "tuned_score": comparison.get("tuned_score"), "defaults_score": comparison.get("defaults_score"),
            "latency_us": latency, "variants": out_variants}


# ------------------------------------------------------------------------------------------ report


TOLERANCE = 0.001  # worst_delta's goal is -TOLERANCE
# Config changes scored beside the default on the same splits and searches (--variant replaces them).
VARIANTS = {"ensemble": ["train.ensemble=true"], "rounds_auto": ["train.refit_rounds_scale=auto"]}


def settled(deltas: list[float], min_seeds: int, max_seeds: int) -> bool:
    """Enough seeds: the mean ± 2 standard errors is wholly on one side of -TOLERANCE (or the cap is reached)."""
    n = len(deltas)
    if n < max(min_seeds, 2):
        return False
    if n >= max_seeds:
        return True
    mean, se = float(np.mean(deltas)), float(np.std(deltas, ddof=1) / math.sqrt(n))
    return mean - 2 * se >= -TOLERANCE or mean + 2 * se < -TOLERANCE


def _mean_se(d: np.ndarray) -> tuple[float, float]:
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    d = np.array([r["delta"] for r in runs])
    mean, se = _mean_se(d)
    variants = {}
    for v in runs[0]["variants"]:
        vd = np.array([r["variants"][v]["delta"] for r in runs])
        variants[v] = {"delta": float(vd.mean()), "paired": _mean_se(vd - d),
                       "ours": float(np.mean([r["variants"][v]["ours"] for r in runs])),
                       "latency_ratio": float(np.median([r["variants"][v]["latency_us"] / r["latency_us"] for r in runs]))}
    return {"name": name, "task": runs[0]["task"], "rows": runs[0]["rows"], "seeds": len(runs),
            "ours": float(np.mean([r["ours"] for r in runs])), "plain": float(np.mean([r["plain"] for r in runs])),
            "delta": mean, "se": se, "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
            "ours_s": float(np.mean([r["ours_s"] for r in runs])),
            "latency_us": float(np.median([r["latency_us"] for r in runs])),
            "defaults_kept": sum(r["kept"] != "tuned" for r in runs), "variants": variants}


def _se(x: float) -> str:
    return f" ± {x:.4f}" if not math.isnan(x) else ""


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| dataset | task | rows | seeds | metric | raygbm | plain | delta (± s.e.) | wins/losses | defaults kept | raygbm s/run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = {"binary": "AUC", "multiclass": "AUC (ovr)", "regression": "RMSE"}[r["task"]]
        print(f"| {r['name']} | {r['task']} | {r['rows']:,} | {r['seeds']} | {m} | {r['ours']:.4f} | {r['plain']:.4f} | "
              f"{r['delta']:+.4f}{_se(r['se'])} | {r['wins']}/{r['losses']} | {r['defaults_kept']} | {r['ours_s']:.0f} |")
    names = list(rows[0]["variants"]) if rows else []
    for v in names:
        print(f"\nvariant {v}: the same splits and searches, scored on the same rows (paired: variant − default)\n")
        print("| dataset | delta, default | delta, variant | paired difference (± s.e.) | 1-row scoring time, variant / default |")
        print("|---|---|---|---|---|")
        for r in rows:
            x = r["variants"][v]
            print(f"| {r['name']} | {r['delta']:+.4f} | {x['delta']:+.4f} | {x['paired'][0]:+.4f}{_se(x['paired'][1])} | "
                  f"{x['latency_ratio']:.2f}× |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2-4 seeds, the binary generated set at 100k rows only")
    ap.add_argument("--min-seeds", type=int, default=5, help="split seeds per small dataset, at least")
    ap.add_argument("--max-seeds", type=int, default=30, help="split seeds per small dataset, at most")
    ap.add_argument("--big-rows", type=int, default=120_000, help="rows of each generated dataset")
    ap.add_argument("--only", default="", help="comma-separated dataset names")
    ap.add_argument("--variant", dest="variants", action="append", default=[],
                    help="NAME=KEY=VALUE[,KEY=VALUE]: also score this config change, paired with the default on the "
                    f"same splits and searches (default: {', '.join(f'{k}={chr(44).join(v)}' for k, v in VARIANTS.items())})")
    ap.add_argument("--no-variants", action="store_true", help="the default config only")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="a config override for our runs, e.g. train.metric=binary_logloss (investigations; the goal "
                    "is measured with the default config)")
    args = ap.parse_args()
    variants = dict((v.split("=", 1)[0], v.split("=", 1)[1].split(",")) for v in args.variants) if args.variants else VARIANTS
    if args.no_variants:
        variants = {}
    (min_seeds, max_seeds), big_rows = ((2, 4), 100_000) if args.quick else ((args.min_seeds, args.max_seeds), args.big_rows)
    specs = [s for s in datasets() if not args.only or s.name in args.only.split(",")]
    if args.quick and not args.only:
        specs = [s for s in specs if s.name != "generated_regression_shift"]

    from raygbm.config import ResourcesConfig
    from raygbm.runtime import ensure_ray

    ensure_ray(ResourcesConfig())
    work = Path(tempfile.mkdtemp(prefix="raygbm-bench-quality-"))
    t0 = time.perf_counter()
    summary = []
    try:
        for spec in specs:
            table = spec.load(big_rows)
            runs: list[dict[str, Any]] = []
            while not runs or spec.repeat and not settled([r["delta"] for r in runs], min_seeds, max_seeds):
                seed = len(runs)
                r = run_once(spec, table, seed, work, args.sets, variants)
                runs.append(r)
                more = "".join(f"  {k} {x['delta']:+.5f}" for k, x in r["variants"].items())
                print(f"{spec.name:<28} seed {seed}: raygbm {r['ours']:.5f}  plain {r['plain']:.5f}  delta {r['delta']:+.5f}{more}  "
                      f"({r['scheme']}, tuned {r['tuned_score']} defaults {r['defaults_score']} kept {r['kept']}, "
                      f"{r['rounds']} rounds, {r['ours_s']:.0f}s vs {r['plain_s']:.1f}s)",
                      flush=True)
            summary.append(summarise(spec.name, runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(summary)
    deltas = [s["delta"] for s in summary]
    se_mean = math.sqrt(sum((s["se"] if not math.isnan(s["se"]) else 0.0) ** 2 for s in summary)) / len(summary)
    per_variant = "".join(
        f" {v}_worst_delta={min(s['variants'][v]['delta'] for s in summary):.5f}"
        f" {v}_mean_delta={float(np.mean([s['variants'][v]['delta'] for s in summary])):.5f}"
        f" {v}_latency_ratio={float(np.median([s['variants'][v]['latency_ratio'] for s in summary])):.2f}"
        for v in variants)
    print(f"\nRESULT worst_delta={min(deltas):.5f} mean_delta={float(np.mean(deltas)):.5f} datasets={len(summary)} "
          f"mean_delta_se={se_mean:.5f} runs={sum(x['seeds'] for x in summary)} wall_s={time.perf_counter() - t0:.0f} "
          f"worst={summary[int(np.argmin(deltas))]['name']}{per_variant}" + (f" set={','.join(args.sets)}" if args.sets else ""))


if __name__ == "__main__":
    main()
