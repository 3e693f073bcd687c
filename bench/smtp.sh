#!/usr/bin/env bash
# Receiver throughput against Haraka and Postfix (issue 13): the same smtp-source load, in one
# run, interleaved (round 1 of every target, then round 2, ...), best of ROUNDS, against
#   - smtp-sink (Postfix's test server: the protocol ceiling, stores nothing);
#   - inbound serve --workers $(nproc) and --workers 1 (durable spool, SPF/DKIM/DMARC answered
#     from a --dns-zone file written here: no DNS traffic; one rule storing to the local S3 target);
#   - Haraka (npm, cached outside the repository), nodes = cores and nodes = 1,
#     rcpt_to.in_host_list + queue/test;
#   - a private Postfix instance (config, queue and data directories under this run's temporary
#     directory, local_transport = discard:), started and stopped here; the system's /etc/postfix
#     and /var/spool/postfix are never read or written.
# It prints msg/s (smtp-source's wall time), CPU per message (user + system of the target's
# process tree from /proc, until the target is idle again), the ratios the issue sets targets
# for, and checks every message was accepted and stored. All traffic on 127.0.0.1.
#
#   bash bench/smtp.sh [MESSAGES] [SESSIONS] [SIZE_BYTES]      (default 2000 10 10240)
#   env: ROUNDS (3), TARGETS (a subset of "sink inbound-n inbound-1 haraka-n haraka-1 postfix"),
#        PYTHON (python3), HARAKA_VERSION (3.3.4), INBOUND_BENCH_CACHE (~/.cache/inbound-bench),
#        KEEP=1 (keep the temporary directory: logs, stored copies)
#
# Exit status: 0 when every check passed (a missed throughput target is reported, not an error).
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${1:-${MESSAGES:-2000}}
SESSIONS=${2:-${SESSIONS:-10}}
SIZE=${3:-${SIZE:-10240}}
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-sink inbound-n inbound-1 haraka-n haraka-1 postfix}
PYTHON=${PYTHON:-python3}
HARAKA_VERSION=${HARAKA_VERSION:-3.3.4}
CACHE=${INBOUND_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inbound-bench}
CORES=$(nproc)
DOMAIN=example.com                      # the receiving (test) domain
SENDER=bench@sender.example             # SPF and DMARC records for it are in the zone below
PATH="$PATH:/usr/sbin:/usr/lib/postfix/sbin"

note() { echo "smtp.sh: $*" >&2; }
want() { case " $TARGETS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# --- installation (only what is missing) --------------------------------------------------
. bench/postfix-install.sh
install_postfix_binaries

HARAKA_DIR="$CACHE/haraka-$HARAKA_VERSION"
HARAKA="$HARAKA_DIR/node_modules/.bin/haraka"
if { want haraka-n || want haraka-1; } && [ ! -x "$HARAKA" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    note "installing npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 npm >/dev/null
  fi
  note "installing Haraka $HARAKA_VERSION into $HARAKA_DIR"
  mkdir -p "$HARAKA_DIR"
  (cd "$HARAKA_DIR" && { [ -f package.json ] || npm init -y >/dev/null; } &&
    npm install --no-audit --no-fund --loglevel=error "Haraka@$HARAKA_VERSION" >/dev/null)
fi

# --- processes: everything started here is stopped on any exit ------------------------------
work=$(mktemp -d /tmp/inbound-bench.XXXXXX)
# Postfix's daemons drop to the postfix user and must reach their queue and log under here.
chmod 755 "$work"
roots=()          # root PIDs of the servers started here
postfix_conf=""   # set once the private Postfix is started

descendants() {   # PID and all its descendants, one per line
  local p
  echo "$1"
  for p in $(pgrep -P "$1" 2>/dev/null || true); do descendants "$p"; done
}

stop_tree() {     # TERM the tree rooted at PID, KILL what is left after 10 s
  local root=$1 all deadline
  all=$(descendants "$root")
  kill -TERM "$root" 2>/dev/null || true
  deadline=$((SECONDS + 10))
  while [ $SECONDS -lt $deadline ]; do
    local alive=no p
    for p in $all; do
      if [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]; then alive=yes; fi
    done
    [ "$alive" = no ] && return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $all 2>/dev/null || true
}

cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  if [ -n "$postfix_conf" ]; then
    postfix -c "$postfix_conf" stop >/dev/null 2>&1 || true
  fi
  for pid in "${roots[@]}"; do stop_tree "$pid"; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then note "kept $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {     # until something accepts on 127.0.0.1:PORT, or fail naming LOG
  local port=$1 log=$2 deadline=$((SECONDS + 60))
  until "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1',$port),1).close()" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      note "nothing listens on 127.0.0.1:$port; the end of $log:"
      tail -20 "$log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

# CPU clock ticks (user + system) of PID's process tree: the live processes' own time plus the
# time of the children they reaped (cutime, cstime), so a Postfix smtpd that exited after its
# 100 connections still counts, through the master that reaped it.
tree_ticks() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
    { line = $0; pid = $1; sub(/^.*\) /, "", line); split(line, f, " ")
      kids[f[2]] = kids[f[2]] " " pid; ticks[pid] = f[12] + f[13] + f[14] + f[15] }
    END { total = 0; n = 1; queue[1] = root
          for (i = 1; i <= n; i++) {
            p = queue[i]; total += ticks[p]
            m = split(kids[p], c, " "); for (j = 1; j <= m; j++) queue[++n] = c[j] }
          print total }'
}
TICKS=$(getconf CLK_TCK)

settle() {        # until PID's tree used under 2 % of a core for 0.5 s (deadline 30 s)
  local root=$1 before after deadline=$((SECONDS + 30))
  before=$(tree_ticks "$root")
  while [ $SECONDS -lt $deadline ]; do
    sleep 0.5
    after=$(tree_ticks "$root")
    [ $((after - before)) -le $((TICKS / 100 + 1)) ] && return 0
    before=$after
  done
}

# --- the targets -----------------------------------------------------------------------------
declare -A port root label count_fn

start_sink() {
  port[sink]=$(free_port)
  smtp-sink -u nobody "127.0.0.1:${port[sink]}" 256 >"$work/sink.log" 2>&1 &
  root[sink]=$!; roots+=("$!")
  label[sink]="smtp-sink (stores nothing)"
  count_fn[sink]=""
  wait_port "${port[sink]}" "$work/sink.log"
}

cat >"$work/rules.yaml" <<YAML
version: 1
name: bench
domains: [$DOMAIN]
rules:
  - name: store
    actions:
      - {type: s3, bucket: mail, prefix: in/}
YAML
# SPF passes for 127.0.0.1 (RFC 7208 ip4); DMARC then passes through the aligned SPF identity,
# smtp-source's From: being the envelope sender. Every other name is NXDOMAIN: no DNS traffic.
cat >"$work/bench.zone" <<ZONE
sender.example         TXT  "v=spf1 ip4:127.0.0.1 -all"
_dmarc.sender.example  TXT  "v=DMARC1; p=reject"
ZONE

start_inbound() { # KEY WORKERS
  local key=$1 workers=$2
  port[$key]=$(free_port)
  "$PYTHON" -m inbound serve --rules "$work/rules.yaml" --data-dir "$work/$key" \
    --listen "127.0.0.1:${port[$key]}" --hostname bench.test --workers "$workers" \
    --dns-zone "$work/bench.zone" 2>"$work/$key.log" &
  root[$key]=$!; roots+=("$!")
  label[$key]="inbound serve --workers $workers"
  count_fn[$key]=count_inbound
  wait_port "${port[$key]}" "$work/$key.log"
}
count_inbound() { { find "$work/$1/s3/mail/in" -type f ! -name '.*' 2>/dev/null || true; } | wc -l; }

start_haraka() {  # KEY NODES
  local key=$1 nodes=$2 dir="$work/$1"
  port[$key]=$(free_port)
  "$HARAKA" -i "$dir" >/dev/null
  printf 'rcpt_to.in_host_list\nqueue/test\n' >"$dir/config/plugins"
  echo "$DOMAIN" >"$dir/config/host_list"
  echo "$key.bench.test" >"$dir/config/me"
  printf '[main]\nlisten=127.0.0.1:%s\nnodes=%s\n' "${port[$key]}" "$nodes" >"$dir/config/smtp.ini"
  mkdir -p "$dir/mail"     # queue/test writes os.tmpdir()/mail_UUID.eml
  TMPDIR="$dir/mail" "$HARAKA" -c "$dir" >"$work/$key.log" 2>&1 &
  root[$key]=$!; roots+=("$!")
  label[$key]="Haraka $HARAKA_VERSION nodes=$nodes"
  count_fn[$key]=count_haraka
  wait_port "${port[$key]}" "$work/$key.log"
}
count_haraka() { { find "$work/$1/mail" -name 'mail_*.eml' || true; } | wc -l; }

start_postfix() {
  local pf="$work/postfix"
  port[postfix]=$(free_port)
  mkdir -p "$pf/conf" "$pf/queue" "$pf/data"
  chown postfix "$pf/data"   # master's lock file; the mail_owner owns data_directory
  cat >"$pf/conf/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination = $DOMAIN
local_transport = discard:
local_recipient_maps =
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
biff = no
readme_directory = no
CF
  # Only the services this path needs, none chrooted (a chroot would need copies of /etc files).
  cat >"$pf/conf/master.cf" <<CF
127.0.0.1:${port[postfix]} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
CF
  postfix_conf="$pf/conf"
  postfix -c "$pf/conf" start >"$work/postfix.log" 2>&1 || {
    note "the private Postfix did not start:"
    cat "$work/postfix.log" "$pf/maillog" >&2 2>/dev/null; exit 1; }
  local deadline=$((SECONDS + 20))
  until [ -s "$pf/queue/pid/master.pid" ]; do
    [ $SECONDS -lt $deadline ] || { note "no master.pid from the private Postfix"; exit 1; }
    sleep 0.1
  done
  root[postfix]=$(tr -d ' ' <"$pf/queue/pid/master.pid")
  label[postfix]="Postfix $(postconf -c "$pf/conf" -h mail_version) (discard:)"
  count_fn[postfix]=count_postfix
  wait_port "${port[postfix]}" "$pf/maillog"
}
# delivered by the discard transport (after cleanup wrote, fsync'd and qmgr scheduled the file)
count_postfix() { grep -c 'status=sent' "$work/postfix/maillog" 2>/dev/null || true; }

# --- one round of one target -------------------------------------------------------------------
declare -A best_s cpu_ms rounds_txt failures
now() { date +%s.%N; }

measure() {       # KEY: sends the load, waits until stored and idle; updates best_s/cpu_ms
  local key=$1 before=0 after t0 t1 c0 c1 secs ms deadline fn=${count_fn[$1]} sent=yes
  [ -n "$fn" ] && before=$($fn "$key")
  c0=$(tree_ticks "${root[$key]}")
  t0=$(now)
  if ! timeout 900 smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f "$SENDER" \
      -t "rcpt@$DOMAIN" -M client.sender.example "127.0.0.1:${port[$key]}" \
      >"$work/source-$key.log" 2>&1; then
    failures[$key]+="smtp-source failed: $(tail -1 "$work/source-$key.log"); "
    sent=no
  fi
  t1=$(now)
  if [ -n "$fn" ]; then   # until every message is stored (or 120 s + 1 s per 20 messages)
    deadline=$((SECONDS + 120 + MESSAGES / 20))
    [ "$sent" = yes ] || deadline=$((SECONDS + 2))   # some were refused: do not wait for all
    while after=$($fn "$key"); [ $((after - before)) -lt "$MESSAGES" ] && [ $SECONDS -lt $deadline ]; do
      sleep 0.2
    done
    [ $((after - before)) -eq "$MESSAGES" ] ||
      failures[$key]+="stored $((after - before)) of $MESSAGES; "
  fi
  settle "${root[$key]}"
  c1=$(tree_ticks "${root[$key]}")
  secs=$(echo "$t1 - $t0" | bc -l)
  ms=$(echo "scale=3; ($c1 - $c0) * 1000 / $TICKS / $MESSAGES" | bc -l)
  rounds_txt[$key]+="$(printf '%.0f' "$(echo "$MESSAGES / $secs" | bc -l)") "
  if [ -z "${best_s[$key]:-}" ] || [ "$(echo "$secs < ${best_s[$key]}" | bc -l)" = 1 ]; then
    best_s[$key]=$secs
  fi
  if [ -z "${cpu_ms[$key]:-}" ] || [ "$(echo "$ms < ${cpu_ms[$key]}" | bc -l)" = 1 ]; then
    cpu_ms[$key]=$ms
  fi
  # Haraka's queue/test leaves a file per message: remove them so the disk does not fill.
  case $key in haraka-*) find "$work/$key/mail" -name 'mail_*.eml' -delete ;; esac
  note "round $round: ${label[$key]}: $(printf '%.2f' "$secs") s, CPU $(printf '%.2f' "$ms") ms/msg"
}

keys=()
for key in sink inbound-n inbound-1 haraka-n haraka-1 postfix; do want "$key" && keys+=("$key"); done
for key in "${keys[@]}"; do
  case $key in
    sink) start_sink ;;
    inbound-n) start_inbound inbound-n "$CORES" ;;
    inbound-1) start_inbound inbound-1 1 ;;
    haraka-n) start_haraka haraka-n "$CORES" ;;
    haraka-1) start_haraka haraka-1 1 ;;
    postfix) start_postfix ;;
  esac
done
for round in $(seq 1 "$ROUNDS"); do
  for key in "${keys[@]}"; do measure "$key"; done
done

# Every stored copy of inbound's carries the SPF verdict the zone makes: pass.
for key in inbound-n inbound-1; do
  want "$key" || continue
  nospf=$(find "$work/$key/s3/mail/in" -type f ! -name '.*' -print0 |
    xargs -0 -r grep -L -m1 '^Received-SPF: pass' | wc -l)
  [ "$nospf" -eq 0 ] || failures[$key]+="$nospf stored copies without Received-SPF: pass; "
done

# --- the table -------------------------------------------------------------------------------
rate() { echo "$MESSAGES / ${best_s[$1]}" | bc -l; }
printf '\n%s messages of %s bytes, %s sessions, a new connection per message; best of %s rounds, interleaved; %s cores\n' \
  "$MESSAGES" "$SIZE" "$SESSIONS" "$ROUNDS" "$CORES"
printf '%-34s %8s  %-20s %12s  %s\n' target "msg/s" "rounds (msg/s)" "CPU ms/msg" check
status=0
for key in "${keys[@]}"; do
  check=ok
  [ -n "${failures[$key]:-}" ] && { check="FAILED: ${failures[$key]}"; status=1; }
  printf '%-34s %8.0f  %-20s %12.2f  %s\n' "${label[$key]}" "$(rate "$key")" "${rounds_txt[$key]}" \
    "${cpu_ms[$key]}" "$check"
done
echo
ratio() {         # NAME A B TARGET: msg/s of A over msg/s of B, against TARGET
  want "$2" && want "$3" || return 0
  local r
  r=$(echo "${best_s[$3]} / ${best_s[$2]}" | bc -l)
  printf '%-44s %5.2fx  (target >= %s: %s)\n' "$1" "$r" "$4" \
    "$([ "$(echo "$r >= $4" | bc -l)" = 1 ] && echo met || echo missed)"
}
ratio "inbound --workers $CORES / Haraka nodes=$CORES" inbound-n haraka-n 1.5
ratio "inbound --workers $CORES / Postfix" inbound-n postfix 1.0
ratio "inbound --workers 1 / Haraka nodes=1" inbound-1 haraka-1 1.0
ratio "inbound --workers 1 / Postfix" inbound-1 postfix 1.0
echo "checked that every message got a 250, that inbound stored every one with Received-SPF: pass," \
  "that Haraka's queue/test wrote and Postfix discarded every one:" \
  "$([ $status = 0 ] && echo all passed || echo SOME FAILED, see the table)"
exit $status
