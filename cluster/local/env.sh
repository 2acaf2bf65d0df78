# Shared settings for the local head-node scripts (sourced, not run). Override any of these from the
# environment. Nothing here names a hyperparameter: compute sizing and addresses only.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${RAYGBM_VENV:-$ROOT/.venv}
export PATH="$VENV/bin:$PATH"          # the head (and so every job's `python`) runs from the project venv
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
RAY_PORT=${RAY_PORT:-6379}
RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
RAY_DASHBOARD_HOST=${RAY_DASHBOARD_HOST:-127.0.0.1}
# Every Ray process's metrics (Ray's, Ray Serve's, raygbm's drift monitor's) in Prometheus format, on the
# node's address (127.0.0.1 by default): cluster/metrics/prometheus.yml scrapes it.
RAY_METRICS_EXPORT_PORT=${RAY_METRICS_EXPORT_PORT:-8080}
# The head's servers (GCS, raylet, workers, agents, metrics) listen on the node's IP. On 127.0.0.1 (the
# default) nothing is reachable from other machines; Ray keeps a local 127.0.0.1 only in its single-node
# mode. Set RAY_NODE_IP_ADDRESS to this machine's address to let worker nodes join (docs/security.md: ports).
RAY_NODE_IP_ADDRESS=${RAY_NODE_IP_ADDRESS:-127.0.0.1}
if [ "$RAY_NODE_IP_ADDRESS" = 127.0.0.1 ]; then
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}
fi
# Serve's HTTP servers on this cluster get raygbm's bounded reads (serve.* limits: RAYGBM_HTTP_LIMITS JSON).
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=${RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH:-raygbm.serving.http_guard:install}
# Serve's fast ingress (serve.fast_ingress, raygbm's default): HAProxy in front of replicas that serve HTTP
# themselves, started through raygbm-haproxy (docs/http-api.md). RAYGBM_FAST_INGRESS=0: Serve's Python proxy.
# The same settings as raygbm.runtime.FAST_INGRESS_ENV; Serve reads them when each node starts.
if [ "${RAYGBM_FAST_INGRESS:-1}" = 1 ]; then
  export RAY_SERVE_ENABLE_HA_PROXY=${RAY_SERVE_ENABLE_HA_PROXY:-1}
  export RAY_SERVE_THROUGHPUT_OPTIMIZED=${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1}
  export RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=${RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE:-1}
  export RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=${RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S:-5}
  export RAY_SERVE_HAPROXY_BINARY_PATH=${RAY_SERVE_HAPROXY_BINARY_PATH:-$VENV/bin/raygbm-haproxy}
fi
# A node's raylet waits 30 s (Ray's default) for its dashboard agent to write its port file, then exits, and the
# node with it ("Timed out waiting for file .../dashboard_agent_listen_port_..."). A head restarted while the
# host is busy (its workers serving under load on 2 cores: tests/cluster/test_gcs_failure.py) has started
# slower than that: two minutes, and a broken agent still stops the node.
export RAY_agent_register_timeout_ms=${RAY_agent_register_timeout_ms:-120000}
export RAY_ADDRESS=${RAY_JOB_ADDRESS:-http://127.0.0.1:$RAY_DASHBOARD_PORT}
# Where the pipeline keeps runs, tuning results and the embedded MLflow store: the same folder the
# CLI uses from the repository root, so submitted jobs and `raygbm` see one registry.
export RAYGBM_HOME=${RAYGBM_HOME:-$ROOT/.raygbm}
# Relative paths in Serve configs (cluster/serve.yaml's `config:`) resolve against the project.
export RAYGBM_PROJECT=${RAYGBM_PROJECT:-$ROOT}
