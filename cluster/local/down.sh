#!/usr/bin/env bash
# Stop the local stack started by up.sh, and the nodes add-node.sh joined to it. Each service
# runs in a session of its own whose leader's pid is in its pid file: the leader gets SIGTERM and
# stops its children (the head without draining: see up.sh), and what is left of its process group
# after 30 s gets SIGKILL. Only this stack's processes are touched (`ray stop` would stop every Ray
# on the machine). Safe to run twice; the stack folder (logs, MLflow database and artifacts, Ray
# token) is kept.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

nodes=$(cd "$STACK" 2>/dev/null && ls node-*.pid 2>/dev/null | sed 's/\.pid$//') || true
for name in $nodes ray mlflow s3; do
  if leader=$(pid_of "$name"); then
    kill -TERM "$leader"
    for _ in $(seq 150); do
      kill -0 -- "-$leader" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL -- "-$leader" 2>/dev/null || true
    echo "stopped $name"
  fi
  rm -f "$STACK/$name.pid"
done
