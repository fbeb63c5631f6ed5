#!/usr/bin/env bash
# Bring up the local stack: an S3 API (moto), an MLflow tracking server and a Ray head, with their
# logs, pid files and state under $OCTVIDEO_STACK_DIR (default: .stack/ in the repo; S3 objects
# live in moto's memory). Then: `source $OCTVIDEO_STACK_DIR/env`. Stop it with down.sh.
#
# Every service listens on 127.0.0.1 only, Ray's node address included. With OCTVIDEO_MULTI_NODE=1
# the Ray head runs on the machine's own address instead, so that add-node.sh can join more Ray
# nodes: Ray lets only a single-node cluster keep to the loopback. Its gRPC ports (GCS, raylets,
# object managers, agents) then listen on all interfaces, each guarded by the cluster's token.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
mkdir -p "$STACK"
STACK=$(cd "$STACK" && pwd)  # absolute, for the env files
BIN=${OCTVIDEO_BIN:-$ROOT/.venv/bin}
S3_PORT=${OCTVIDEO_S3_PORT:-9000}
MLFLOW_PORT=${OCTVIDEO_MLFLOW_PORT:-5000}
RAY_PORT=${OCTVIDEO_RAY_PORT:-6379}                  # GCS
DASHBOARD_PORT=${OCTVIDEO_RAY_DASHBOARD_PORT:-8265}  # dashboard and job API
CLIENT_PORT=${OCTVIDEO_RAY_CLIENT_PORT:-10001}       # Ray Client server
AGENT_PORT=${OCTVIDEO_RAY_AGENT_PORT:-52365}         # dashboard agent
RAY_CPUS=${OCTVIDEO_RAY_CPUS:-2}
MULTI_NODE=${OCTVIDEO_MULTI_NODE:-0}
BUCKET=octvideo-demo
TOKEN=$STACK/ray_auth_token
# The stack's S3 credentials (moto takes any; default "testing") and an optional MLflow token
# reach the Ray processes, and through them every job, from their environment: never through the
# runtime env, whose env_vars Ray writes to runtime_env_agent.log. Your own AWS_* are not used.
export AWS_ACCESS_KEY_ID=${OCTVIDEO_S3_ACCESS_KEY_ID:-testing}
export AWS_SECRET_ACCESS_KEY=${OCTVIDEO_S3_SECRET_ACCESS_KEY:-testing}
if [[ -n ${OCTVIDEO_MLFLOW_TRACKING_TOKEN:-} ]]; then export MLFLOW_TRACKING_TOKEN=$OCTVIDEO_MLFLOW_TRACKING_TOKEN; else unset MLFLOW_TRACKING_TOKEN; fi

alive() { pid_of "$1" >/dev/null; }

if alive s3 && alive mlflow && alive ray; then
  echo "stack already up in $STACK (source $STACK/env; stop it with cluster/local/down.sh)"
  exit 0
elif alive s3 || alive mlflow || alive ray; then
  echo "stack in $STACK is partly up; run cluster/local/down.sh first" >&2
  exit 1
fi
for port in "$S3_PORT" "$MLFLOW_PORT" "$RAY_PORT" "$DASHBOARD_PORT" "$CLIENT_PORT" "$AGENT_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is taken: free it, or pick others with the OCTVIDEO_*_PORT variables of $0" >&2
    exit 1
  fi
done

# Each service runs in its own session, so down.sh stops it and all its children by its pid.
start() {
  local name=$1; shift
  setsid "$@" >"$STACK/$name.log" 2>&1 </dev/null &
  echo $! >"$STACK/$name.pid"
}
fail() {
  echo "$1; last lines of $STACK/$2.log:" >&2
  tail -n 20 "$STACK/$2.log" >&2
  "$ROOT/cluster/local/down.sh" >/dev/null
  exit 1
}
wait_for() {  # name url [curl options]: until the url answers 2xx, 60 s at most
  local name=$1 url=$2; shift 2
  for _ in $(seq 120); do
    curl -sf -o /dev/null --max-time 2 "$@" "$url" && return
    alive "$name" || fail "$name exited while starting" "$name"
    sleep 0.5
  done
  fail "$name did not answer $url within 60 s" "$name"
}

# Ray token auth, on for everything (GCS, raylet, dashboard, jobs): the token is made once and
# kept in the stack folder; the head and its jobs get it from RAY_AUTH_TOKEN_PATH, like clients.
[[ -s $TOKEN ]] || (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$TOKEN")

start s3 "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT"
# MLflow's server-side job runner (GenAI features) is not needed: 7 fewer processes, ~400 MB less.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false start mlflow "$BIN/mlflow" server --host 127.0.0.1 \
  --port "$MLFLOW_PORT" --workers 1 --backend-store-uri "sqlite:///$STACK/mlflow.db" \
  --artifacts-destination "$STACK/mlartifacts"
# With the venv first on PATH, a job's `python` is the venv's. Loopback only: Ray's switch for a
# single-machine cluster (as on macOS), which binds its gRPC ports and node address to 127.0.0.1
# and is inherited by every Ray process and job.
if [[ $MULTI_NODE == 1 ]]; then
  ray_node=()
  touch "$STACK/multi_node"
else
  ray_node=(--node-ip-address=127.0.0.1)
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  rm -f "$STACK/multi_node"
fi
# No drain on SIGTERM: Ray 2.60's head drains for up to 30 s so that work can move to other
# nodes, and when down.sh stops the head, the whole stack goes.
PATH=$BIN:$PATH RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 \
  start ray "$BIN/ray" start --head \
  "${ray_node[@]}" --block --num-cpus="$RAY_CPUS" --temp-dir="$STACK/ray" --port="$RAY_PORT" \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --ray-client-server-port="$CLIENT_PORT" \
  --dashboard-agent-listen-port="$AGENT_PORT" --disable-usage-stats

wait_for s3 "http://127.0.0.1:$S3_PORT/"
curl -sf -o /dev/null -X PUT "http://127.0.0.1:$S3_PORT/$BUCKET" || fail "could not create bucket $BUCKET" s3
wait_for mlflow "http://127.0.0.1:$MLFLOW_PORT/health"
wait_for ray "http://127.0.0.1:$DASHBOARD_PORT/api/jobs/" -H "Authorization: Bearer $(<"$TOKEN")"

# For clients. RAY_ADDRESS is the GCS (ray.init, ray status); `ray job` takes
# RAY_API_SERVER_ADDRESS first (an http:// RAY_ADDRESS would break ray.init and ray status).
(umask 077 && cat >"$STACK/env" <<ENV
export RAY_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$TOKEN
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_DEFAULT_REGION=us-east-1
ENV
)
[[ -z ${MLFLOW_TRACKING_TOKEN:-} ]] || echo "export MLFLOW_TRACKING_TOKEN=$MLFLOW_TRACKING_TOKEN" >>"$STACK/env"
# For jobs: `ray job submit --runtime-env $STACK/runtime_env.yaml ...` reach the same services
# (addresses only: the credentials come from the Ray processes' environment).
cat >"$STACK/runtime_env.yaml" <<YAML
env_vars:
  MLFLOW_TRACKING_URI: http://127.0.0.1:$MLFLOW_PORT
  AWS_ENDPOINT_URL: http://127.0.0.1:$S3_PORT
  AWS_DEFAULT_REGION: us-east-1
YAML
echo "stack up in $STACK: S3 http://127.0.0.1:$S3_PORT (bucket $BUCKET), MLflow http://127.0.0.1:$MLFLOW_PORT, Ray dashboard http://127.0.0.1:$DASHBOARD_PORT"
echo "use it with: source $STACK/env"
