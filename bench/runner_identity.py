"""The data stage's outputs do not depend on its runner: Ray Data (the stage's), the plain Ray tasks it ran
on before (``bench/preprocess.py``'s ``RayTaskRunner``) and one process (``LocalRunner``) write the same
Parquet files byte for byte and the same preprocessor, on 1M generated rows, with a random split and with a
time split that drops duplicates.

    python bench/runner_identity.py [--rows 1000000]

Ends with one line:

    RESULT identical_random=<True|False> identical_time=<True|False> rows=... files_random=... files_time=...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from preprocess import RayTaskRunner, cached_shards  # noqa: E402  (bench/preprocess.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--data-dir", default=str(ROOT / "bench" / ".data"), help="generated shards are cached here")
    args = ap.parse_args()

    from raygbm.config import load_config
    from raygbm.data.preprocess import LocalRunner, preprocess
    from raygbm.runtime import ensure_ray

    data = cached_shards(Path(args.data_dir), args.rows, 4)
    home = Path(tempfile.mkdtemp(prefix="raygbm-bench-identity-"))
    os.environ["RAYGBM_HOME"] = str(home)
    result: dict[str, object] = {}
    try:
        for name, split in (("random", []), ("time", ["split.time=event_time", "data.duplicates=drop"])):
            cfg = load_config(None, ["data.drop=[id]", "resources.read_chunk_rows=200000", *split],
                              {"data.source": str(data), "data.label": "label"})
            ensure_ray(cfg.resources)
            files = {}
            for runner_name, runner in (("ray data", None), ("ray tasks", RayTaskRunner()), ("local", LocalRunner())):
                t = time.perf_counter()
                run = preprocess(cfg, runner=runner, force=True)
                manifest = json.loads((run.run_dir / "manifest.json").read_text())["sha256"]
                files[runner_name] = {k: v for k, v in manifest.items() if k != "data_report.json"}  # timings differ
                print(f"{name} split, {runner_name}: {time.perf_counter() - t:.1f}s, "
                      f"{sum(k.endswith('.parquet') for k in manifest)} Parquet files", flush=True)
            result[f"identical_{name}"] = files["ray data"] == files["ray tasks"] == files["local"]
            result[f"files_{name}"] = sum(k.endswith(".parquet") for k in files["local"])
        print("RESULT " + " ".join(f"{k}={v}" for k, v in {**result, "rows": args.rows}.items()))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
