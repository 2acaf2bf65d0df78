#!/usr/bin/env bash
# Start a local Ray head node: token auth (token file mode 0600), every server on 127.0.0.1 (see env.sh).
#   cluster/local/start.sh            # all CPUs
#   RAY_NUM_CPUS=2 cluster/local/start.sh
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
  mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
  (umask 077 && python -c 'import secrets; print(secrets.token_hex(32), end="")' > "$RAY_AUTH_TOKEN_PATH")
fi
chmod 600 "$RAY_AUTH_TOKEN_PATH"
args=(--head --port "$RAY_PORT" --node-ip-address "$RAY_NODE_IP_ADDRESS" --dashboard-host "$RAY_DASHBOARD_HOST"
      --dashboard-port "$RAY_DASHBOARD_PORT" --metrics-export-port "$RAY_METRICS_EXPORT_PORT" --disable-usage-stats
      # The dashboard agent on a free port (Ray's fixed 52365 lets only one Ray per host run jobs).
      --dashboard-agent-listen-port "${RAY_DASHBOARD_AGENT_PORT:-0}")
[ -n "${RAY_NUM_CPUS:-}" ] && args+=(--num-cpus "$RAY_NUM_CPUS")
[ -n "${RAY_TEMP_DIR:-}" ] && args+=(--temp-dir "$RAY_TEMP_DIR")
# Serve's fallback proxy (HAProxy's backup server, on the head) on a free port, not its fixed 8500.
if [ -n "${RAY_SERVE_ENABLE_HA_PROXY:-}" ] && [ -z "${RAY_SERVE_FALLBACK_PROXY_HTTP_PORT:-}" ]; then
  RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=$(python -c 'from raygbm.runtime import free_port; print(free_port())')
  export RAY_SERVE_FALLBACK_PROXY_HTTP_PORT
fi
ray start "${args[@]}"
echo "head node up; submit jobs with: cluster/local/submit.sh run --data /abs/path --label label"
echo "(jobs address: $RAY_ADDRESS, RAYGBM_HOME=$RAYGBM_HOME)"
