# Sourced by bench/smtp.sh and bench/cluster.sh: Debian's postfix package for its binaries
# (smtp-source, smtp-sink, a private instance's postfix), installed only when missing, never
# configured or left running: "No configuration" writes no /etc/postfix/main.cf, a policy-rc.d
# denying every start covers the install, and a system Postfix the package started anyway is
# stopped again. Needs a `note` function (one line to stderr).

system_master_running() {
  local pidfile=/var/spool/postfix/pid/master.pid
  [ -r "$pidfile" ] && kill -0 "$(tr -d ' ' <"$pidfile")" 2>/dev/null
}

install_postfix_binaries() {
  command -v smtp-source >/dev/null 2>&1 && command -v postfix >/dev/null 2>&1 && return 0
  note "installing Debian's postfix (its binaries only: nothing configured or started)"
  local was_running=no added_policy=no
  system_master_running && was_running=yes
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    added_policy=yes
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 postfix >/dev/null
  [ "$added_policy" = yes ] && rm -f /usr/sbin/policy-rc.d
  if [ "$was_running" = no ] && system_master_running; then
    note "the postfix package started the system's Postfix: stopping it (postfix stop)"
    postfix stop >/dev/null 2>&1 || true
  fi
}
