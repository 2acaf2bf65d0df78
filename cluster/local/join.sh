#!/usr/bin/env bash
# Join a worker node to the head that start.sh started: its own raylet, object store and agents, token auth
# (the head's token file), every server on RAY_NODE_IP_ADDRESS. A head on 127.0.0.1 (start.sh's default)
# runs Ray's single-node mode and takes no workers: start the head and its workers with RAY_NODE_IP_ADDRESS
# set to the machine's address (reachable by the other nodes; the cluster token guards every server).
#   export RAY_NODE_IP_ADDRESS=10.0.0.5; cluster/local/start.sh
#   RAY_NUM_CPUS=2 RAY_SERVE_WORKER_PROXY_HTTP_PORT=8001 cluster/local/join.sh
#                                               # a worker on the same machine (run it again for more, each
#                                               # with its own proxy port: Serve drains the proxy of a node
#                                               # without replicas, and proxies sharing one port on one
#                                               # machine drop the connections queued at the drained one)
#   RAY_HEAD_ADDRESS=10.0.0.5:6379 RAY_NODE_IP_ADDRESS=10.0.0.6 cluster/local/join.sh   # from another machine
#                                               # (with the head's token file at RAY_AUTH_TOKEN_PATH)
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [ "$RAY_NODE_IP_ADDRESS" = 127.0.0.1 ]; then
  echo "a head on 127.0.0.1 takes no workers: set RAY_NODE_IP_ADDRESS to this machine's address for start.sh and join.sh" >&2
  exit 2
fi
if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
  echo "no cluster token at $RAY_AUTH_TOKEN_PATH: start the head (start.sh) or copy its token there" >&2
  exit 1
fi
# Every port free or chosen (the dashboard agent's fixed 52365 and the head's metrics port are taken when the
# head runs on this machine too).
args=(--address "${RAY_HEAD_ADDRESS:-$RAY_NODE_IP_ADDRESS:$RAY_PORT}" --node-ip-address "$RAY_NODE_IP_ADDRESS"
      --dashboard-agent-listen-port "${RAY_DASHBOARD_AGENT_PORT:-0}" --disable-usage-stats)
[ -n "${RAY_WORKER_METRICS_EXPORT_PORT:-}" ] && args+=(--metrics-export-port "$RAY_WORKER_METRICS_EXPORT_PORT")
[ -n "${RAY_NUM_CPUS:-}" ] && args+=(--num-cpus "$RAY_NUM_CPUS")
ray start "${args[@]}"
echo "worker node joined ${RAY_HEAD_ADDRESS:-$RAY_NODE_IP_ADDRESS:$RAY_PORT}"
