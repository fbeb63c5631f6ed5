# shellcheck shell=bash
# Sourced by up.sh, down.sh and demo.sh: where the stack lives, and which of its services run.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK=${OCTVIDEO_STACK_DIR:-$ROOT/.stack}

# Print the pid of a service (s3, mlflow or ray) if it runs: its pid file names a live session
# leader running the service's command. A pid file that outlived its process (say, across a
# reboot) may name another process by now, which is left alone.
pid_of() {
  local pid command
  pid=$(cat "$STACK/$1.pid" 2>/dev/null) || return 1
  case $1 in s3) command=moto_server ;; mlflow) command="mlflow server" ;; ray | node-*) command="ray start" ;; esac
  local pattern="^ *$pid .*$command"
  [[ $(ps -o sid=,args= -p "$pid" 2>/dev/null) =~ $pattern ]] && echo "$pid"
}
