#!/usr/bin/env bash
# A cluster (SPEC 7b) against moto server (issue 17): messages per second and CPU per message
# with 1, 2 and 3 receivers (`inbound serve --spool s3://BUCKET/PREFIX --queue URL`) and 1, 2
# and 3 consumers (`inbound ses consume --named-rules-only --concurrency K`), S3, SQS and SNS
# over real HTTP on 127.0.0.1, and where the bottleneck is: moto is ONE Python process standing
# in for S3, SQS and SNS, so its CPU is measured too (a moto server of this run's own, a fresh
# one per count, stopped at the end) and the output says when it, and not inbound, set the rate.
#
# Per count N the receive phase (N receivers, smtp-source's load split across them; SPF, DKIM
# and DMARC answered from a --dns-zone file written here: no DNS traffic) and then the consume
# phase (N consumers draining the full queue; the rule set's S3 and SNS actions) are measured
# apart, so each role's rate is its own. CPU is user + system from /proc of each role's process
# tree, of moto's, and of the whole machine (what other work took). bench/cluster.py does the
# work and prints the table; this script installs what is missing and runs it.
#
#   bash bench/cluster.sh [MESSAGES] [SESSIONS] [SIZE_BYTES]    (default 1000 10 10240)
#   env: QUICK=1 (300 messages: a quick look), COUNTS ("1 2 3"), CONCURRENCY (8, per
#        consumer), WORKERS (1, per receiver), PYTHON (python3), KEEP=1 (keep the temporary
#        directory: every process's log)
#
# Exit status: 0 when every check passed (every message got a 250, was stored and published
# exactly once, the queue was left empty); 1 when one failed; 2 when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-}
MESSAGES=${1:-${MESSAGES:-$([ -n "$QUICK" ] && echo 300 || echo 1000)}}
SESSIONS=${2:-${SESSIONS:-10}}
SIZE=${3:-${SIZE:-10240}}
COUNTS=${COUNTS:-1 2 3}
CONCURRENCY=${CONCURRENCY:-8}
WORKERS=${WORKERS:-1}
PYTHON=${PYTHON:-python3}
PATH="$PATH:/usr/sbin"

note() { echo "cluster.sh: $*" >&2; }

# --- installation (only what is missing) --------------------------------------------------
if ! "$PYTHON" -c 'import inbound.cli.main' 2>/dev/null; then
  note "inbound's dependencies are missing: run it in the README's virtual environment" \
    "(. .venv/bin/activate; pip install -c constraints.txt -e '.[dev]')"
  exit 2
fi
if ! "$PYTHON" -c 'import moto.server, flask, boto3' 2>/dev/null; then
  note "installing moto server (moto[server], pinned by constraints.txt)"
  "$PYTHON" -m pip install -q -c constraints.txt 'moto[server]'
fi
. bench/postfix-install.sh
install_postfix_binaries  # for smtp-source

# --- the run: bench/cluster.py stops every process it started, however it ends ---------------
args=("$MESSAGES" "$SESSIONS" "$SIZE" --counts "$(echo "$COUNTS" | tr ' ' ',')"
  --concurrency "$CONCURRENCY" --workers "$WORKERS")
[ -n "${KEEP:-}" ] && args+=(--keep)
# This tree's inbound, for the receivers and consumers the helper starts.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/cluster.py "${args[@]}"
