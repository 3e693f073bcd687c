"""A private Postfix for tests: a relay between two servers of a test, never the system's.

It has its own configuration, queue and data directories (bench/smtp.sh's way), in a temporary
directory of its own rather than under the test's tmp_path: Postfix's daemons run as the
`postfix` user and must reach their queue, and pytest's temporary directories are private to
root (0700). Only the services a relay needs run, none chrooted; it listens on a free port of
127.0.0.1 and hands everything to `[127.0.0.1]:relay_port`, retrying deferred mail every second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.integration.receiver import DEADLINE, free_port, wait_for


class PrivatePostfix:
    """A Postfix of its own (bench/smtp.sh's way): it listens on `port` and relays all it
    gets to `[127.0.0.1]:relay_port`; `stop` (or the context manager) removes it."""

    def __init__(self, relay_port: int, *, hostname: str = "relay.chain.test") -> None:
        if shutil.which("postfix", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
            raise AssertionError("postfix is not installed (apt-get install postfix)")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="inbound-postfix-"))
        self.root.chmod(0o755)  # the postfix user's daemons reach their queue through it
        self.conf = self.root / "conf"
        for name in ("conf", "queue", "data"):
            (self.root / name).mkdir()
        shutil.chown(self.root / "data", "postfix")
        self.maillog = self.root / "maillog"
        (self.conf / "main.cf").write_text(
            _MAIN_CF.format(root=self.root, hostname=hostname, relay_port=relay_port)
        )
        (self.conf / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        self._postfix("start")
        wait_for(lambda: _listening(self.port), "the private Postfix to listen")

    def _postfix(self, command: str) -> None:
        result = subprocess.run(
            ["/usr/sbin/postfix", "-c", str(self.conf), command],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        if result.returncode != 0 and command == "start":
            log = self.maillog.read_text() if self.maillog.exists() else ""
            raise AssertionError(f"postfix {command}: {result.stdout}{result.stderr}{log}")

    def flush(self) -> None:
        """Try every deferred message now (the relay came back)."""
        self._postfix("flush")

    def sent(self) -> int:
        """Messages Postfix handed on (its log's `status=sent` lines)."""
        if not self.maillog.exists():
            return 0
        return self.maillog.read_text().count("status=sent")

    def stop(self) -> None:
        self._postfix("stop")
        pid_file = self.root / "queue" / "pid" / "master.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            master = int(pid_file.read_text().strip())
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                os.kill(master, 0)
                time.sleep(0.05)
            os.kill(master, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostfix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydomain = chain.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
relayhost = [127.0.0.1]:{relay_port}
default_transport = smtp
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
biff = no
readme_directory = no
"""

# Only the services a relay needs, none chrooted (a chroot would need copies of /etc files).
_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 1 1 qmgr
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
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
