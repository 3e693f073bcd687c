#!/usr/bin/env bash
# Receiver throughput and memory: accepted messages per second of `inbound serve` (durable spool,
# local targets, dispatching as it receives), in one process and with `--workers $(nproc)`,
# against Postfix's smtp-sink (the protocol ceiling, no storage) in the same run, then the peak
# RSS of the receiver taking 40 MB messages (bench/memory.py).
#
#   bash bench/smtp.sh [MESSAGES] [SESSIONS] [SIZE_BYTES]      (default 2000 10 10240)
#
# Needs smtp-source and smtp-sink from Debian's postfix package (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${1:-2000}
SESSIONS=${2:-10}
SIZE=${3:-10240}
PYTHON=${PYTHON:-python3}

if ! command -v smtp-source >/dev/null 2>&1 && [ ! -x /usr/sbin/smtp-source ]; then
  echo "installing postfix (smtp-source, smtp-sink)..." >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
PATH="$PATH:/usr/sbin"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  local port=$1 deadline=$((SECONDS + 20))
  until "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "nothing listens on $port" >&2; exit 1; }
    sleep 0.1
  done
}

# seconds taken by smtp-source to deliver MESSAGES over SESSIONS parallel sessions
run_source() {
  local port=$1 start end
  start=$(date +%s.%N)
  smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f bench@sender.example \
    -t rcpt@example.com "127.0.0.1:$port" >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

cat > "$work/rules.yaml" <<'YAML'
version: 1
name: bench
domains: [example.com]
rules:
  - name: store
    actions:
      - {type: s3, bucket: mail, prefix: in/}
YAML

sink_port=$(free_port)
smtp-sink -u nobody "127.0.0.1:$sink_port" 256 >/dev/null 2>&1 &
pids+=($!)
wait_port "$sink_port"
sink_seconds=$(run_source "$sink_port")

# CPU seconds used so far by PID and its child processes (user + system), from /proc.
cpu_seconds() {
  local total=0 ticks
  ticks=$(getconf CLK_TCK)
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "scale=3; $total / $ticks" | bc -l
}

# `inbound serve` with WORKERS receiving processes: sets serve_seconds, stored, drain_seconds,
# cpu_ms (CPU per message, receiving and dispatching: steadier than msg/s on a busy machine).
measure_serve() {
  local workers=$1 data="$work/data-$1" port pid deadline drain_start
  port=$(free_port)
  "$PYTHON" -m inbound serve --rules "$work/rules.yaml" --data-dir "$data" \
    --listen "127.0.0.1:$port" --hostname bench.test --workers "$workers" 2>"$work/serve-$workers.log" &
  pid=$!
  pids+=("$pid")
  wait_port "$port"
  local cpu_before
  cpu_before=$(cpu_seconds "$pid")
  serve_seconds=$(run_source "$port")
  drain_start=$(date +%s.%N)
  deadline=$((SECONDS + 120))
  while [ -n "$(ls -A "$data/spool/queue" 2>/dev/null || true)" ] && [ $SECONDS -lt $deadline ]; do
    sleep 0.1
  done
  drain_seconds=$(echo "$(date +%s.%N) - $drain_start" | bc -l)
  cpu_ms=$(echo "scale=2; ($(cpu_seconds "$pid") - $cpu_before) * 1000 / $MESSAGES" | bc -l)
  stored=$(find "$data/s3/mail/in" -type f ! -name '.*' 2>/dev/null | wc -l || true)
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

CORES=$(nproc)
measure_serve 1
one_seconds=$serve_seconds one_stored=$stored one_drain=$drain_seconds one_cpu=$cpu_ms
measure_serve "$CORES"
many_seconds=$serve_seconds many_stored=$stored many_drain=$drain_seconds many_cpu=$cpu_ms

ratio() { echo "scale=2; $1 / $2" | bc -l; }
rate() { echo "scale=0; $MESSAGES / $1" | bc -l; }
printf '\n%-34s %9s %9s %10s\n' "target ($SESSIONS sessions, $SIZE bytes)" messages seconds "msg/s"
printf '%-34s %9d %9.2f %10d\n' "smtp-sink (no storage)" "$MESSAGES" "$sink_seconds" "$(rate "$sink_seconds")"
printf '%-34s %9d %9.2f %10d\n' "inbound serve (durable spool)" "$MESSAGES" "$one_seconds" "$(rate "$one_seconds")"
printf '%-34s %9d %9.2f %10d\n' "inbound serve --workers $CORES" "$MESSAGES" "$many_seconds" "$(rate "$many_seconds")"
printf 'inbound / smtp-sink throughput: %s (1 process), %s (--workers %s)   (target: >= 1000 msg/s)\n' \
  "$(ratio "$sink_seconds" "$one_seconds")" "$(ratio "$sink_seconds" "$many_seconds")" "$CORES"
printf 'CPU per message, receiving and dispatching: %s ms (1 process), %s ms (--workers %s)\n' \
  "$one_cpu" "$many_cpu" "$CORES"
printf 'stored by the s3 action: %s and %s of %s (dispatch finished %.1f s and %.1f s after the last 250)\n' \
  "$one_stored" "$many_stored" "$MESSAGES" "$one_drain" "$many_drain"

# Peak RSS with 40 MB messages, with and without an attachment rule (each in a fresh process).
"$PYTHON" bench/memory.py
