#!/usr/bin/env bash
# container-build.sh - a Docker engine and a registry-free Python base image for the container
# test (tests/container/), on a Debian host that reaches only its apt mirror and PyPI.
#
# Adapted and trimmed from the probe script container-build.sh (2026-11-22) that came with the
# team's notes on building containers on the CI machines: no image registry is reachable there,
# so the base image is made with debootstrap + `docker import` instead of `FROM python:...`.
#
# Usage:
#   .ci/container-build.sh ensure [ENV_FILE]
#                                     install docker.io, debootstrap and docker-compose if
#                                     missing, start dockerd if no engine answers, build the
#                                     base images if missing; then write KEY=VALUE lines for
#                                     the tests (see below) to ENV_FILE (default: stdout)
#   .ci/container-build.sh status     the engine and the images
#   .ci/container-build.sh stop       stop the dockerd this script started (by its PID file)
#
# `ensure` writes (its progress goes to stderr):
#   INBOUND_TEST_DOCKER=1
#   INBOUND_TEST_DOCKER_CLI=/usr/bin/docker
#   INBOUND_TEST_DOCKER_BASE=local/python:bookworm          (BASE of the receiver's Dockerfile)
#   INBOUND_TEST_DOCKER_DEBIAN_BASE=local/debian:bookworm   (BASE of container/spamd.Dockerfile)
#
# The base images (cached in /var/lib/docker; made once, ~60 s, then reused):
#   local/debian:bookworm  debootstrap minbase + ca-certificates + this host's extra CAs (HTTPS
#                          may be served under a local CA: pip needs them) + the host's apt mirror
#   local/python:bookworm  + python3 python3-venv, a venv at /opt/venv first on PATH (so `python`
#                          and `pip` behave as in python:3.x-slim; Debian's pip refuses: PEP 668)
#
# Environment:
#   CB_WORK=/tmp/inbound-container-build   dockerd.pid, dockerd.log, logs, the debootstrap tree
#   CB_SUITE=bookworm     CB_MIRROR=(from the host's apt sources)     CB_FORCE=1 rebuild the bases
#   CB_DOCKER=/usr/bin/docker   Debian's client: /usr/local/bin/docker may be another one
set -euo pipefail

WORK=${CB_WORK:-/tmp/inbound-container-build}
SUITE=${CB_SUITE:-bookworm}
DOCKER=${CB_DOCKER:-/usr/bin/docker}
DOCKERD=${DOCKERD:-/usr/sbin/dockerd}
SOCK=${CB_SOCK:-/var/run/docker.sock}
DEB_IMG=local/debian:$SUITE
PY_IMG=local/python:$SUITE
SMOKE_IMG=local/cb-smoke:latest
export DOCKER_HOST=unix://$SOCK

log() { printf '[container-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'; }

# ---------------------------------------------------------------- install
# Runs an apt command; while another process holds the apt/dpkg lock, waits and retries.
apt_retry() {
  local out=$WORK/apt.log rc i
  for i in $(seq 1 21); do
    rc=0
    DEBIAN_FRONTEND=noninteractive "$@" >"$out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] && grep -qiE 'could not get lock|unable to (acquire|lock)|is another process using it|dpkg frontend lock' "$out"; then
      [ "$i" -ge 21 ] && break
      log "apt lock held by another process; waiting 30 s (try $i/20)"
      sleep 30
      continue
    fi
    [ "$rc" -ne 0 ] && tail -20 "$out" >&2
    return "$rc"
  done
  die "apt lock still held after 10 minutes: $*"
}

cmd_install() {
  local need=() t
  [ -x "$DOCKERD" ] && [ -x "$DOCKER" ] || need+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)  # to validate compose.yaml
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${need[*]}: run as root (apt-get install ${need[*]})"
  t=$(now)
  log "apt-get install -y ${need[*]}"
  apt_retry apt-get update
  apt_retry apt-get install -y "${need[@]}"
  log "installed ${need[*]} in $(took "$t")"
}

# ---------------------------------------------------------------- engine
engine_up() { "$DOCKER" info >/dev/null 2>&1; }

smoke_test() { # a one-file image (the static tini of docker.io) proves containers can start
  if ! "$DOCKER" image inspect "$SMOKE_IMG" >/dev/null 2>&1; then
    local d; d=$(mktemp -d "$WORK/smoke.XXXX")
    cp /usr/bin/docker-init "$d/tini"
    tar -C "$d" -c tini | "$DOCKER" import - "$SMOKE_IMG" >/dev/null || { rm -rf "$d"; return 1; }
    rm -rf "$d"
  fi
  "$DOCKER" run --rm --network=host "$SMOKE_IMG" /tini --version >/dev/null 2>&1
}

stop_pid() { # stops one dockerd we started, by PID
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null || { log "PID $pid is not dockerd; not touching it"; return 0; }
  kill -TERM "$pid"
  for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  log "dockerd $pid did not stop in 20 s; sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_start() {
  if engine_up; then return 0; fi
  [ -x "$DOCKERD" ] || die "$DOCKERD missing"
  # overlay2 first; vfs works where overlay cannot mount, but is slow and large. The tests run
  # containers with --network=host, so the bridge is not needed: --bridge=none is the fallback.
  local drivers=(overlay2 vfs) nets=(bridge none) drv net pid i t
  for net in "${nets[@]}"; do
    for drv in "${drivers[@]}"; do
      t=$(now)
      local args=(--host "unix://$SOCK" --storage-driver="$drv")
      [ "$net" = none ] && args+=(--iptables=false --bridge=none)
      log "starting $DOCKERD ${args[*]} (log: $WORK/dockerd.log)"
      rm -f "$WORK/dockerd.pid"
      # setsid: its own session, so the daemon outlives this shell and its process group.
      setsid "$DOCKERD" "${args[@]}" --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 </dev/null &
      pid=$!
      for i in $(seq 1 60); do
        engine_up && break
        [ -s "$WORK/dockerd.pid" ] && pid=$(cat "$WORK/dockerd.pid")
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
      done
      [ -s "$WORK/dockerd.pid" ] && pid=$(cat "$WORK/dockerd.pid")
      if engine_up && smoke_test; then
        echo "driver=$drv net=$net" >"$WORK/dockerd.mode"
        log "dockerd up (PID $pid, driver=$drv, net=$net) in $(took "$t")"
        return 0
      fi
      log "dockerd with driver=$drv net=$net failed; last log lines:"
      grep -E 'level=(error|fatal)|failed' "$WORK/dockerd.log" | tail -5 >&2 || tail -5 "$WORK/dockerd.log" >&2
      stop_pid "$pid"
    done
  done
  die "could not start dockerd (see $WORK/dockerd.log)"
}

cmd_stop() {
  local f=$WORK/dockerd.pid
  [ -f "$f" ] || { log "no $f: this script started no dockerd"; return 0; }
  log "stopping dockerd PID $(cat "$f")"
  stop_pid "$(cat "$f")"
  rm -f "$f" "$WORK/dockerd.mode"
}

cmd_status() {
  [ -f "$WORK/dockerd.pid" ] && echo "dockerd PID $(cat "$WORK/dockerd.pid") ($(cat "$WORK/dockerd.mode" 2>/dev/null))"
  if engine_up; then
    "$DOCKER" info 2>/dev/null | grep -E 'Server Version|Storage Driver|Docker Root Dir'
    "$DOCKER" images
  else
    echo "engine not running"
  fi
}

# ---------------------------------------------------------------- base images
# First URI of this host's Debian apt sources (deb822 *.sources, or one-line *.list format).
host_uri() { # $1 = main|security
  local want=$1 f u
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    u=$(awk -v want="$want" 'BEGIN{RS="";FS="\n"}
      { uri=""; suites=""; enabled="yes"
        for(i=1;i<=NF;i++){
          if($i ~ /^URIs:/){ s=$i; sub(/^URIs:[ \t]*/,"",s); uri=s }
          if($i ~ /^Suites:/){ s=$i; sub(/^Suites:[ \t]*/,"",s); suites=s }
          if($i ~ /^Enabled:[ \t]*no/){ enabled="no" } }
        if(uri=="" || enabled=="no" || uri !~ /debian/) next
        sec = (suites ~ /-security/)
        if((want=="security") == sec){ split(uri,a,/[ \t]+/); print a[1]; exit } }' "$f")
    [ -n "$u" ] && { echo "$u"; return 0; }
  done
  u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | sed -e 's/#.*//' -e 's/\[[^]]*\]//g' | awk -v want="$want" '
        $1=="deb" && $2 ~ /debian/ { sec = ($3 ~ /-security/ || $3 ~ /\/updates$/)
          if((want=="security") == sec){ print $2; exit } }')
  [ -n "$u" ] && echo "$u"
}

make_debian() {
  local mirror=${CB_MIRROR:-$(host_uri main || true)}
  [ -n "$mirror" ] || die "no Debian mirror in the apt sources: set CB_MIRROR"
  local secmirror=${CB_SECURITY_MIRROR:-$(host_uri security || true)}
  secmirror=${secmirror:-${mirror%/debian}/debian-security}
  local root=$WORK/rootfs-$SUITE t n=0 c
  rm -rf "$root"
  t=$(now)
  log "debootstrap --variant=minbase --include=ca-certificates $SUITE $root $mirror"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
  log "debootstrap done in $(took "$t")"

  # This host's extra CAs: without them pip fails with CERTIFICATE_VERIFY_FAILED where HTTPS
  # is served under a local CA.
  mkdir -p "$root/usr/local/share/ca-certificates"
  while IFS= read -r -d '' c; do cp "$c" "$root/usr/local/share/ca-certificates/"; n=$((n+1)); done \
    < <(find /usr/local/share/ca-certificates -type f -name '*.crt' -print0 2>/dev/null)
  chroot "$root" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in $root"
  log "copied $n host CA file(s) into the image"

  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $secmirror
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' >"$root/etc/apt/apt.conf.d/99cb-mirror"
  if ! chroot "$root" apt-get update >"$WORK/chroot-apt.log" 2>&1 || grep -qE '^(Err|W: Failed)' "$WORK/chroot-apt.log"; then
    log "apt-get update with -updates/-security failed in the rootfs; keeping only '$SUITE'"
    sed -i '1,/^$/ s/^Suites: .*/Suites: '"$SUITE"'/' "$root/etc/apt/sources.list.d/debian.sources"
    sed -i '/^$/,$d' "$root/etc/apt/sources.list.d/debian.sources"
  fi
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/log/*.log "$root"/var/log/apt/* "$root/etc/resolv.conf" "$root/etc/hostname"
  t=$(now)
  tar --numeric-owner -C "$root" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["bash"]' - "$DEB_IMG" >/dev/null
  log "imported $DEB_IMG in $(took "$t")"
  if grep -q " $root/" /proc/mounts; then log "something is still mounted under $root; not deleting it"
  else rm -rf "$root"; fi
}

make_python() {
  local d=$WORK/python-$SUITE t
  mkdir -p "$d"
  cat >"$d/Dockerfile" <<EOF
FROM $DEB_IMG
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-venv python3-pip \\
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \\
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PIP_DISABLE_PIP_VERSION_CHECK=1
CMD ["python3"]
EOF
  t=$(now)
  log "building $PY_IMG"
  "$DOCKER" build --network=host -t "$PY_IMG" "$d" >"$WORK/build-python.log" 2>&1 \
    || { tail -30 "$WORK/build-python.log" >&2; die "building $PY_IMG failed (log: $WORK/build-python.log)"; }
  log "built $PY_IMG in $(took "$t") ($("$DOCKER" run --rm --network=host "$PY_IMG" python --version 2>&1))"
}

cmd_base() {
  command -v debootstrap >/dev/null || die "debootstrap missing"
  local force=${CB_FORCE:-0}
  if [ "$force" = 1 ] || ! "$DOCKER" image inspect "$DEB_IMG" >/dev/null 2>&1; then
    make_debian
    force=1   # the python image must be rebuilt on the new base
  fi
  if [ "$force" = 1 ] || ! "$DOCKER" image inspect "$PY_IMG" >/dev/null 2>&1; then
    make_python
  else
    log "$PY_IMG exists (CB_FORCE=1 to rebuild)"
  fi
}

cmd_ensure() { # $1 = where the KEY=VALUE lines go (default: stdout)
  local out=${1:-/dev/stdout}
  cmd_install
  cmd_start
  cmd_base
  printf 'INBOUND_TEST_DOCKER=1\nINBOUND_TEST_DOCKER_CLI=%s\nINBOUND_TEST_DOCKER_BASE=%s\nINBOUND_TEST_DOCKER_DEBIAN_BASE=%s\n' \
    "$DOCKER" "$PY_IMG" "$DEB_IMG" >"$out"
}

case "${1:-}" in
  ensure|status|stop) mkdir -p "$WORK"; "cmd_$1" "${@:2}" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
