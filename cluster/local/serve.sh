#!/usr/bin/env bash
# Deploy the endpoint on the local head with `serve deploy` (Serve's declarative config), and wait until
# it answers:
#   cluster/local/serve.sh                     # cluster/serve.yaml: the registry's champion
#   cluster/local/serve.sh my-serve.yaml       # another config
#   cluster/local/serve.sh --shutdown          # remove every Serve application
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [ "${1:-}" = "--shutdown" ]; then
  exec serve shutdown --address "$RAY_ADDRESS" -y
fi
config=${1:-$ROOT/cluster/serve.yaml}
serve deploy "$config" --address "$RAY_ADDRESS"
port=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["http_options"]["port"])' "$config")
for _ in $(seq 1 120); do
  if python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "http://127.0.0.1:$port/readyz" 2>/dev/null; then
    echo "endpoint ready at http://127.0.0.1:$port"
    exit 0
  fi
  sleep 1
done
echo "the endpoint did not become ready in 120 s: serve status --address $RAY_ADDRESS" >&2
exit 1
