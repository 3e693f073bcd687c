#!/usr/bin/env bash
# real-components.sh - install and run a real clamd, spamd and moto server on loopback for the
# tests, CI and benchmarks of inbound (Debian 12; root for the install step; offline except the
# apt mirror; moto comes with the project's dev extras: pip install -c constraints.txt -e '.[dev]').
#
# Usage:
#   .ci/real-components.sh start  [--state DIR]   install what is missing, start all, wait, write DIR/env
#   .ci/real-components.sh stop   [--state DIR]   stop what `start` recorded in DIR (by PID), nothing else
#   .ci/real-components.sh status [--state DIR]   PID and whether each daemon answers (exit 1 if one does not)
#   .ci/real-components.sh install                apt only
#
# DIR/env (source it with `set -a; . DIR/env; set +a`):
#   INBOUND_TEST_CLAMD=127.0.0.1:PORT          clamd over TCP
#   INBOUND_TEST_CLAMD_SOCKET=unix:DIR/clamav/clamd.sock
#   INBOUND_TEST_CLAMD_STREAM_MAX=BYTES        clamd's StreamMaxLength (INSTREAM size limit)
#   INBOUND_TEST_SPAMD=127.0.0.1:PORT          spamd (SPAMC/1.5)
#   INBOUND_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT   moto server (lambda-simple backend: no Docker)
#
# Environment (all optional):
#   INBOUND_RC_STATE=/tmp/inbound-real-components   state dir (config, signature DB, logs, pids, env)
#   CLAMD_PORT=0  SPAMD_PORT=0  MOTO_PORT=0    0 picks a free port on 127.0.0.1
#   RC_PYTHON=python3             the Python that has moto installed
#   CLAMD_STREAM_MAX=1048576      bytes; small on purpose, so the tests can exceed it cheaply
#   RC_SKIP_INSTALL=0             1: `start` does not run apt
#   RC_WAIT=90                    seconds each daemon may take to answer
#
# clamd uses the project's signature DB (fixtures/clamav/, no freshclam); spamd uses the rules
# shipped in the .deb with --local (no network tests: deterministic offline). Nothing here reads
# files outside this repository and the state dir.
set -euo pipefail

MODE="${1:-}"; shift || true
STATE="${INBOUND_RC_STATE:-/tmp/inbound-real-components}"
while [ $# -gt 0 ]; do
  case "$1" in
    --state) STATE="$2"; shift 2;;
    *) echo "unknown argument: $1" >&2; exit 2;;
  esac
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="$(realpath -m "$STATE")"
PIDS="$STATE/pids"
SIGNATURES="$ROOT/fixtures/clamav"
CLAMD_PORT="${CLAMD_PORT:-0}"; SPAMD_PORT="${SPAMD_PORT:-0}"; MOTO_PORT="${MOTO_PORT:-0}"
RC_PYTHON="${RC_PYTHON:-python3}"
CLAMD_STREAM_MAX="${CLAMD_STREAM_MAX:-1048576}"
RC_WAIT="${RC_WAIT:-90}"
APT_PACKAGES="clamav-daemon spamassassin spamd spamc"

log() { printf '[real-components] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- install
apt_install() {
  local missing=() p
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "apt packages missing (${missing[*]}): run as root: $0 install"
  mkdir -p "$STATE"
  # Keep postinst scripts from starting the system clamd/freshclam/spamd (no signatures yet,
  # and we run our own): invoke-rc.d asks policy-rc.d, and exit 101 means "not now".
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  log "apt: installing ${missing[*]}"
  local rc=0 t0=$SECONDS
  # --no-install-recommends skips sa-compile (gcc, re2c and ~50 s of rule compiling in postinst),
  # gnupg and the SPF/DMARC plugins, none of which matter with spamd --local.
  { apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
         --no-install-recommends "${missing[@]}"; } > "$STATE/apt.log" 2>&1 || rc=$?
  if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  [ $rc = 0 ] || { tail -20 "$STATE/apt.log" >&2; die "apt-get failed (log: $STATE/apt.log)"; }
  log "apt: installed in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- helpers
pid_alive() {  # a zombie counts as dead (PID 1 in some containers reaps orphans lazily)
  local pid="$1" st
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  st="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [ "$st" != Z ] && [ "$st" != X ]
}
recorded_pid() { if [ -f "$PIDS/$1.pid" ]; then cat "$PIDS/$1.pid"; fi; }

free_port() {  # a port nothing listens on now (the daemon binds it a moment later)
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

probe() {  # NAME -> 0 if the daemon answers its protocol's ping
  case "$1" in
    clamd)  # zPING -> PONG\0
      ( exec 3<>"/dev/tcp/127.0.0.1/$CLAMD_PORT" && printf 'zPING\0' >&3 \
        && IFS= read -r -d '' -t 3 r <&3 && [ "$r" = PONG ] ) 2>/dev/null ;;
    spamd)  # PING SPAMC/1.5 -> SPAMD/1.5 0 PONG
      ( exec 3<>"/dev/tcp/127.0.0.1/$SPAMD_PORT" && printf 'PING SPAMC/1.5\r\n\r\n' >&3 \
        && IFS= read -r -t 3 r <&3 && [[ "$r" == SPAMD/*" 0 PONG"* ]] ) 2>/dev/null ;;
    moto)   # GET /moto-api/ -> HTTP/1.x 200
      ( exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT" \
        && printf 'GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 \
        && IFS= read -r -t 3 r <&3 && [[ "$r" == "HTTP/1."?" 200"* ]] ) 2>/dev/null ;;
    *) return 1 ;;
  esac
}
port_of() { case "$1" in clamd) echo "$CLAMD_PORT";; spamd) echo "$SPAMD_PORT";; moto) echo "$MOTO_PORT";; esac; }

wait_ready() {  # NAME PID LOG: poll the protocol until it answers, the process dies or RC_WAIT passes
  local name="$1" pid="$2" logf="$3" t0
  t0=$(date +%s.%N)
  while ! probe "$name"; do
    pid_alive "$pid" || { tail -25 "$logf" >&2 || true; die "$name (pid $pid) exited during start-up; log: $logf"; }
    awk -v a="$t0" -v b="$(date +%s.%N)" -v w="$RC_WAIT" 'BEGIN{exit !(b - a < w)}' \
      || { tail -25 "$logf" >&2 || true; die "$name not answering after ${RC_WAIT}s; log: $logf"; }
    sleep 0.05
  done
  log "$name ready in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')s (pid $pid, 127.0.0.1:$(port_of "$name"))"
}

already_running() {  # NAME -> 0 if the process recorded in this state dir is alive and answering
  local pid; pid="$(recorded_pid "$1")"
  if [ -n "$pid" ] && pid_alive "$pid" && probe "$1"; then log "$1 already running (pid $pid)"; return 0; fi
  rm -f "$PIDS/$1.pid"; return 1
}

read_env() {  # the ports of a previous `start` in this state dir
  [ -f "$STATE/env" ] || return 0
  local k v
  while IFS='=' read -r k v; do
    case "$k" in
      INBOUND_TEST_CLAMD) CLAMD_PORT="${v##*:}";;
      INBOUND_TEST_SPAMD) SPAMD_PORT="${v##*:}";;
      INBOUND_TEST_AWS_ENDPOINT) MOTO_PORT="${v##*:}";;
    esac
  done < "$STATE/env"
}

# ---------------------------------------------------------------- clamd
start_clamd() {
  already_running clamd && return 0
  command -v clamd >/dev/null || die "clamd not installed (run as root: $0 install)"
  [ "$CLAMD_PORT" != 0 ] || CLAMD_PORT="$(free_port)"
  port_free "$CLAMD_PORT" || die "127.0.0.1:$CLAMD_PORT is already in use"
  local d="$STATE/clamav" hex
  rm -rf "$d/db"; mkdir -p "$d/db"
  cp "$SIGNATURES"/*.ndb "$d/db/"
  # EICAR is kept base64-encoded in the repository; its hex body signature is made here.
  hex="$(base64 -d "$SIGNATURES/eicar.com.b64" | od -An -v -tx1 | tr -d ' \n')"
  [ ${#hex} = 136 ] || die "$SIGNATURES/eicar.com.b64 does not decode to the 68-byte EICAR file"
  echo "Eicar-Test-Signature:0:*:$hex" > "$d/db/eicar.ndb"
  cat > "$d/clamd.conf" <<EOF
# generated by .ci/real-components.sh: test-only signature DB, no freshclam
Foreground yes
DatabaseDirectory $d/db
LocalSocket $d/clamd.sock
LocalSocketMode 666
FixStaleSocket yes
TCPSocket $CLAMD_PORT
TCPAddr 127.0.0.1
PidFile $d/clamd.pid
LogFile $d/clamd.log
LogTime yes
TemporaryDirectory /tmp
MaxThreads 4
StreamMaxLength $CLAMD_STREAM_MAX
ScanMail yes
ScanArchive yes
Bytecode no
SelfCheck 600
EOF
  rm -f "$d/clamd.log"
  # Foreground yes: $! is clamd itself, so `stop` can signal it by PID.
  nohup clamd -c "$d/clamd.conf" > "$d/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/clamd.pid"
  wait_ready clamd "$!" "$d/stdout.log"
}

# ---------------------------------------------------------------- spamd
start_spamd() {
  already_running spamd && return 0
  command -v spamd >/dev/null || die "spamd not installed (run as root: $0 install)"
  [ "$SPAMD_PORT" != 0 ] || SPAMD_PORT="$(free_port)"
  port_free "$SPAMD_PORT" || die "127.0.0.1:$SPAMD_PORT is already in use"
  local d="$STATE/spamd" run=()
  mkdir -p "$d"
  if [ "$(id -u)" = 0 ]; then
    # spamd should not run as root; debian-spamd comes with the package.
    id debian-spamd >/dev/null 2>&1 || die "user debian-spamd missing (spamd package not installed properly)"
    chown debian-spamd:debian-spamd "$d"
    run=(setpriv --reuid debian-spamd --regid debian-spamd --init-groups env HOME="$d")
    "${run[@]}" test -w "$d" || die "debian-spamd cannot write $d: use a state dir whose parents are world-searchable"
  fi
  # --configpath: the rules shipped in the .deb. A failed (offline) sa-update leaves an empty
  #   /var/lib/spamassassin/<version>/ that would otherwise shadow them ("no rules were found").
  # --local: no DNSBL/URIBL/SPF/DKIM network tests, so scores are deterministic offline.
  rm -f "$d/spamd.log"
  nohup "${run[@]}" spamd --listen "127.0.0.1:$SPAMD_PORT" --allowed-ips 127.0.0.1 \
    --pidfile "$d/spamd.pid" --configpath /usr/share/spamassassin --nouser-config --local \
    --max-children 2 --min-children 1 --syslog "$d/spamd.log" --helper-home-dir "$d" \
    > "$d/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/spamd.pid"   # no -d: this PID is the spamd parent, which stops its children on TERM
  wait_ready spamd "$!" "$d/stdout.log"
}

# ---------------------------------------------------------------- moto server
start_moto() {
  already_running moto && return 0
  "$RC_PYTHON" -c 'import moto.server, flask' 2>/dev/null \
    || die "moto server not installed for $RC_PYTHON (pip install -c constraints.txt -e '.[dev]')"
  [ "$MOTO_PORT" != 0 ] || MOTO_PORT="$(free_port)"
  port_free "$MOTO_PORT" || die "127.0.0.1:$MOTO_PORT is already in use"
  local d="$STATE/moto"
  mkdir -p "$d"
  # exec keeps $! the server itself (a pyenv shim execs too), so `stop` can signal it by PID.
  nohup "$RC_PYTHON" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" > "$d/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/moto.pid"
  wait_ready moto "$!" "$d/stdout.log"
  # Lambda without Docker (reference section 3): the lambda-simple backend never runs code and
  # answers with the request payload or the next queued result. Not reset by /moto-api/reset.
  "$RC_PYTHON" - "$MOTO_PORT" <<'PY' || die "moto: cannot select the lambda-simple backend"
import sys, urllib.request
request = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/moto-api/config",
    data=b'{"lambda": {"use_docker": false}}',
    headers={"Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(request, timeout=10) as response:
    assert response.status in (200, 201), response.status
PY
}

# ---------------------------------------------------------------- modes
do_start() {
  local t0=$SECONDS
  mkdir -p "$STATE" "$PIDS"
  chmod 755 "$STATE"   # spamd runs as debian-spamd and must reach its own dir in here
  read_env
  [ "${RC_SKIP_INSTALL:-0}" = 1 ] || apt_install
  start_clamd
  start_spamd
  start_moto
  {
    printf 'INBOUND_TEST_CLAMD=127.0.0.1:%s\n' "$CLAMD_PORT"
    printf 'INBOUND_TEST_CLAMD_SOCKET=unix:%s\n' "$STATE/clamav/clamd.sock"
    printf 'INBOUND_TEST_CLAMD_STREAM_MAX=%s\n' "$CLAMD_STREAM_MAX"
    printf 'INBOUND_TEST_SPAMD=127.0.0.1:%s\n' "$SPAMD_PORT"
    printf 'INBOUND_TEST_AWS_ENDPOINT=http://127.0.0.1:%s\n' "$MOTO_PORT"
  } > "$STATE/env"
  log "started in $((SECONDS - t0))s; environment in $STATE/env"
  cat "$STATE/env"
}

stop_one() {  # NAME: TERM the recorded PID if it is still that daemon; KILL after 10 s
  local name="$1" pid
  pid="$(recorded_pid "$name")"
  [ -n "$pid" ] || return 0
  if ! pid_alive "$pid"; then rm -f "$PIDS/$name.pid"; return 0; fi
  if ! tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "$name"; then
    log "$name: pid $pid is no longer $name; not touching it"
    rm -f "$PIDS/$name.pid"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do pid_alive "$pid" || break; sleep 0.05; done
  if pid_alive "$pid"; then log "$name: pid $pid ignored TERM for 10s, sending KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$PIDS/$name.pid"
  log "$name stopped (pid $pid)"
}

do_status() {
  local n pid up rc=0
  read_env
  for n in clamd spamd moto; do
    pid="$(recorded_pid "$n")"; up=no
    if probe "$n"; then up=yes; else rc=1; fi
    printf '%-6s pid=%-8s answering=%s\n' "$n" "${pid:--}" "$up"
  done
  return $rc
}

case "$MODE" in
  install) apt_install ;;
  start)   do_start ;;
  stop)    stop_one moto; stop_one spamd; stop_one clamd ;;
  status)  do_status ;;
  *) sed -n '2,29p' "$0" >&2; exit 2 ;;
esac
