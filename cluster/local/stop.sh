#!/usr/bin/env bash
# Stop the local head node started by start.sh (and every Ray process of this user on this machine).
set -euo pipefail
source "$(dirname "$0")/env.sh"
ray stop "$@"
