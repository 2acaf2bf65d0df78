#!/usr/bin/env bash
# Submit a pipeline command as a Ray Job to the local head and wait for it:
#   cluster/local/submit.sh run --config pipelines/configs/cluster.yaml --data /abs/path/to/shards
#   cluster/local/submit.sh predict --data /abs/in --output /abs/out.parquet
# Paths must be absolute (or URIs): the job runs in its own copy of the working directory.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cmd=${1:?usage: submit.sh COMMAND [ARGS...]   (COMMAND: preprocess, tune, train, evaluate, run, predict)}
shift
env_json=$(python -c 'import json, os, sys; print(json.dumps({"env_vars": {k: os.environ[k] for k in sys.argv[1:] if k in os.environ}}))' \
  RAYGBM_HOME MLFLOW_TRACKING_URI)
cd "$ROOT"
exec ray job submit --address "$RAY_ADDRESS" --working-dir . --runtime-env-json "$env_json" \
  -- python -m "pipelines.$cmd" "$@"
