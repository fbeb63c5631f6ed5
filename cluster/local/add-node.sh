#!/usr/bin/env bash
# Join one more Ray node to the local stack's head, as a worker node of a multi-node cluster would:
#   cluster/local/add-node.sh [CPUS [RESOURCES]]   (default 1 CPU; prints the name, node-<n>, and Ray node id)
# RESOURCES: custom Ray resources as JSON. A decode node for `data.ingest: ray_data` offers decode
# slots and no CPU, so that no training worker lands on it: add-node.sh 0 '{"decode": 2}' with
# data.decoder_resources {"decode": 1}.
# The node runs in a session of its own with its own Ray folder ($STACK/<name>/) and log
# ($STACK/<name>.log); down.sh stops it with the stack. Killing its session (kill -KILL -- -<pid>
# of $STACK/<name>.pid) takes the node away at once, as a preempted machine would.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BIN=${OCTVIDEO_BIN:-$ROOT/.venv/bin}
CPUS=${1:-1}
RESOURCES=${2:-"{}"}
[[ -s $STACK/env ]] && pid_of ray >/dev/null || { echo "no stack up in $STACK: run cluster/local/up.sh first" >&2; exit 1; }
[[ -e $STACK/multi_node ]] || {
  echo "the stack in $STACK keeps Ray on the loopback, where Ray allows one node only: restart it with" \
    "OCTVIDEO_MULTI_NODE=1 cluster/local/up.sh to add nodes" >&2
  exit 1
}
source "$STACK/env"

alive_nodes() {  # ids of the cluster's live nodes, one per line
  "$BIN/ray" list nodes --format json --limit 1000 --filter state=ALIVE 2>/dev/null |
    "$BIN/python" -c 'import json, sys; print(*(node["node_id"] for node in json.load(sys.stdin)), sep="\n")'
}
before=$(alive_nodes)

n=1
while [[ -e $STACK/node-$n.pid ]]; do n=$((n + 1)); done
NAME=node-$n
# The head took the default agent port; this node's agent gets a free one.
AGENT_PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PATH=$BIN:$PATH setsid "$BIN/ray" start --address="$RAY_ADDRESS" --block --num-cpus="$CPUS" --resources="$RESOURCES" \
  --temp-dir="$STACK/$NAME" --dashboard-agent-listen-port="$AGENT_PORT" --disable-usage-stats \
  >"$STACK/$NAME.log" 2>&1 </dev/null &
echo $! >"$STACK/$NAME.pid"

# Up once the head lists one more live node (60 s at most); print its name and Ray node id.
for _ in $(seq 120); do
  if ! pid_of "$NAME" >/dev/null; then
    echo "$NAME exited while starting; last lines of $STACK/$NAME.log:" >&2
    tail -n 20 "$STACK/$NAME.log" >&2
    rm -f "$STACK/$NAME.pid"
    exit 1
  fi
  new=$(comm -13 <(sort <<<"$before") <(alive_nodes | sort))
  if [[ -n $new ]]; then
    echo "$NAME $new"
    exit 0
  fi
  sleep 0.5
done
echo "$NAME did not join the head within 60 s; see $STACK/$NAME.log" >&2
exit 1
