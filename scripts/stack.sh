#!/usr/bin/env bash
# The whole stack on one machine as local processes (no Docker): Redis from PATH (with a
# password), the demo shop, crawler worker(s) (Chromium under Xvfb), the job runner, the
# search service and the control service, run by honcho from the Procfile.
#
# The stack's own state (environment file with the token and Redis password, Redis data,
# crawler cookies, log) lives in a state folder NEXT TO the data root (<data root>.stack), not
# inside it: jobs write their outputs under the data root and must never reach that state.
#
#   scripts/stack.sh run      in the foreground; Ctrl-C stops everything
#   scripts/stack.sh up       in the background; returns once the control service answers
#   scripts/stack.sh down     stops a background stack and checks nothing is left behind
#   scripts/stack.sh env      prints the stack's environment file (ports, URLs, token)
#
# Settings (environment): CNCLIP_DATA_ROOT (./data), CNCLIP_CONTROL_PORT (8000),
# CNCLIP_SHOP_PORT (8600), CNCLIP_STACK_REDIS_PORT (a free port), CNCLIP_STACK_CRAWLERS (1),
# CNCLIP_STACK_STATE_DIR (<data root>.stack),
# CNCLIP_CONTROL_TOKEN (made up once and kept in the environment file).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
# This script's own helpers must not look like the stack's processes (see leftovers).
unset CNCLIP_STACK_ID
DATA_ROOT=$(realpath -m "${CNCLIP_DATA_ROOT:-./data}")
STATE_DIR=$(realpath -m "${CNCLIP_STACK_STATE_DIR:-$DATA_ROOT.stack}")
case "$STATE_DIR/" in
  "$DATA_ROOT"/*) echo "stack: the state folder $STATE_DIR must not be inside the data root" >&2; exit 2 ;;
esac
ENV_FILE=$STATE_DIR/stack.env
PID_FILE=$STATE_DIR/honcho.pid
LOG_FILE=$STATE_DIR/stack.log

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# SO_REUSEADDR as the servers use it: a port held only by closed connections (TIME_WAIT) is
# free, one that something listens on is not.
port_free() { "$PY" -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }

write_env() {
  (umask 077; mkdir -p "$STATE_DIR" "$STATE_DIR/redis" "$STATE_DIR/crawler" "$DATA_ROOT")
  local token="${CNCLIP_CONTROL_TOKEN:-}"
  if [ -z "$token" ] && [ -f "$ENV_FILE" ]; then
    token=$(sed -n 's/^CNCLIP_CONTROL_TOKEN=//p' "$ENV_FILE")
  fi
  [ -n "$token" ] || token=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')
  # Redis holds the QR codes (keys to the shop account): a password, made up once and kept.
  local redis_password=""
  [ -f "$ENV_FILE" ] && redis_password=$(sed -n 's/^CNCLIP_STACK_REDIS_PASSWORD=//p' "$ENV_FILE")
  [ -n "$redis_password" ] || redis_password=$("$PY" -c 'import secrets; print(secrets.token_hex(24))')
  local redis_port="${CNCLIP_STACK_REDIS_PORT:-$(free_port)}"
  local control_port="${CNCLIP_CONTROL_PORT:-8000}" shop_port="${CNCLIP_SHOP_PORT:-8600}"
  # Only the control service calls the search service: any free loopback port will do.
  local search_port="${CNCLIP_SEARCH_PORT:-$(free_port)}"
  for port in "$redis_port" "$control_port" "$shop_port" "$search_port"; do
    port_free "$port" || { echo "stack: port $port is in use" >&2; exit 1; }
  done
  umask 077
  # Every process of the stack carries CNCLIP_STACK_ID, so `down` can find any left behind.
  cat > "$ENV_FILE" <<ENV
CNCLIP_STACK_ID=$(basename "$DATA_ROOT")-$$-$(date +%s)
CNCLIP_DATA_ROOT=$DATA_ROOT
CNCLIP_REDIS_URL=redis://:$redis_password@127.0.0.1:$redis_port/0
CNCLIP_STACK_REDIS_PORT=$redis_port
CNCLIP_STACK_REDIS_PASSWORD=$redis_password
REDISCLI_AUTH=$redis_password
CNCLIP_STACK_REDIS_DIR=$STATE_DIR/redis
CNCLIP_CONTROL_HOST=127.0.0.1
CNCLIP_CONTROL_PORT=$control_port
CNCLIP_CONTROL_TOKEN=$token
CNCLIP_SHOP_PORT=$shop_port
CNCLIP_CRAWLER_PROFILE=shop
CNCLIP_CRAWLER_BASE_URL=http://127.0.0.1:$shop_port
CNCLIP_CRAWLER_BROWSER_MODE=${CNCLIP_CRAWLER_BROWSER_MODE:-xvfb}
CNCLIP_CRAWLER_DATA_DIR=$STATE_DIR/crawler
CNCLIP_RUNNER_STOP_GRACE_S=3
CNCLIP_SEARCH_HOST=127.0.0.1
CNCLIP_SEARCH_PORT=$search_port
CNCLIP_CONTROL_SEARCH_URL=http://127.0.0.1:$search_port
PYTHONUNBUFFERED=1
ENV
}

HONCHO=(.venv/bin/honcho start -f Procfile -e "$ENV_FILE" -d . -c "crawler=${CNCLIP_STACK_CRAWLERS:-1}")

stack_id() { sed -n 's/^CNCLIP_STACK_ID=//p' "$ENV_FILE" 2>/dev/null; }

# Processes whose environment carries this stack's id (Chromium and Xvfb included).
leftovers() {
  local id; id=$(stack_id)
  [ -n "$id" ] || return 0
  local pid
  for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}; pid=${pid%/environ}
    [ "$pid" = "$$" ] && continue
    if { tr '\0' '\n' < "$environ"; } 2>/dev/null | grep -qx "CNCLIP_STACK_ID=$id"; then
      echo "$pid"
    fi
  done
}

wait_control() {
  local port; port=$(sed -n 's/^CNCLIP_CONTROL_PORT=//p' "$ENV_FILE")
  for _ in $(seq 1 300); do
    if "$PY" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$port/healthz', timeout=1).json()['redis'] is not True)" 2>/dev/null; then
      return 0
    fi
    if [ -f "$PID_FILE" ] && ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      echo "stack: exited during start; see $LOG_FILE" >&2; tail -n 30 "$LOG_FILE" >&2; return 1
    fi
    sleep 0.5
  done
  echo "stack: the control service did not answer; see $LOG_FILE" >&2
  return 1
}

down() {
  if [ -f "$PID_FILE" ]; then
    local pid; pid=$(cat "$PID_FILE")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$PID_FILE"
  fi
  # Redis rewrites its environment block for its process title, so it is asked directly.
  local redis_port; redis_port=$(sed -n 's/^CNCLIP_STACK_REDIS_PORT=//p' "$ENV_FILE" 2>/dev/null)
  local REDISCLI_AUTH; REDISCLI_AUTH=$(sed -n 's/^CNCLIP_STACK_REDIS_PASSWORD=//p' "$ENV_FILE" 2>/dev/null)
  export REDISCLI_AUTH
  if [ -n "$redis_port" ] && redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
    echo "stack: Redis still answers on $redis_port; shutting it down" >&2
    redis-cli -p "$redis_port" shutdown >/dev/null 2>&1 || true
  fi
  local left
  for _ in $(seq 1 40); do
    left=$(leftovers)
    [ -z "$left" ] && break
    sleep 0.25
  done
  if [ -n "$left" ]; then
    local names=""
    for pid in $left; do names="$names $pid($(cat "/proc/$pid/comm" 2>/dev/null || echo gone))"; done
    echo "stack: stopping leftover processes:$names" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
  echo "stack: stopped"
}

case "${1:-run}" in
  run)
    write_env
    exec "${HONCHO[@]}"
    ;;
  up)
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      echo "stack: already running (pid $(cat "$PID_FILE"))" >&2; exit 1
    fi
    write_env
    setsid "${HONCHO[@]}" --no-colour > "$LOG_FILE" 2>&1 < /dev/null &
    echo $! > "$PID_FILE"
    if ! wait_control; then down; exit 1; fi
    echo "stack: up (log $LOG_FILE, environment $ENV_FILE)"
    ;;
  down)
    down
    ;;
  env)
    cat "$ENV_FILE"
    ;;
  env-file)
    echo "$ENV_FILE"
    ;;
  *)
    echo "usage: $0 run|up|down|env|env-file" >&2; exit 2
    ;;
esac
