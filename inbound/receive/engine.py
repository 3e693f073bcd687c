"""The SMTP engine's I/O: an `asyncio.Protocol` that turns bytes into commands and DATA.

It owns the connection's mechanics, and no decision about mail: the input buffer split into
command lines with `bytes.find`, DATA handed chunk by chunk to a `DataScanner` (data.py), the
replies of one burst of pipelined commands written at once (RFC 2920 §3.1), flow control (no
reading while a command works for the server or the client does not read its replies), the
command timeout (RFC 5321 §4.5.3.2, only while waiting for the client), and the end of the
connection: the server's close is a half-close that lets the client read every reply already
sent, and what the client still sends is drained for a short while, so that no reset destroys
a reply in flight. commands.py and smtp.py give it its commands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from inbound.core import reply as replies
from inbound.receive.data import DataScanner
from inbound.receive.limits import ReceiverLimits
from inbound.receive.session import LINE_BUFFER_LIMIT, LINE_TOO_LONG, wire

log = logging.getLogger("inbound.receive")

# After the server closes: how long the client gets to read the replies and close its side,
# while whatever it still sends is read and thrown away.
LINGER_SECONDS = 2.0

# While the server works on a command, at most this much more input is read ahead.
BUSY_BUFFER = 64 * 1024

Handler = Callable[[Any, str | None], None]


class SmtpEngine(asyncio.Protocol):
    """Bytes in, commands and DATA out; replies and the connection's end."""

    # verb -> handler, built once per class (commands.py): no lookup by reflection per session.
    COMMANDS: ClassVar[dict[str, Handler]] = {}

    def __init__(self, limits: ReceiverLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._position = 0
        self._skipping = False  # discarding an over-long command line up to its LF
        self._before_tls = False  # between STARTTLS and a completed handshake
        self._out: list[bytes] = []
        self.scanner: DataScanner | None = None  # in DATA: where its bytes go
        self._task: asyncio.Task[None] | None = None  # a command working for the server
        self._read_paused = False
        self._write_paused = False
        self.closing = False  # the server has decided to end the connection
        self.lost = False
        self.eof = False  # the client half-closed
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None

    # -- what subclasses provide ---------------------------------------------------------

    def dispatch_line(self, line: bytes) -> None:
        """One command line, its LF included."""
        raise NotImplementedError

    def data_ended(self) -> None:
        """The scanner found CRLF.CRLF; `self.scanner` is still set."""
        raise NotImplementedError

    def on_lost(self) -> None:
        """The connection is gone: release what the session holds."""

    def on_timeout(self) -> None:
        self.close_saying(wire(replies.TIMEOUT))

    # -- input ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing or self.lost or self._before_tls:
            # Draining: the client's bytes after our last reply are never read; nor are those
            # between STARTTLS and the handshake (RFC 3207 §4; the TLS layer reads the rest).
            return
        if self._task is not None:
            # The server is working (a commit, a handshake): keep what comes, up to a bound,
            # so that a client's EOF or reset is still seen while it works.
            self._buffer = self._buffer[self._position :] + data
            self._position = 0
            self._set_reading()
            return
        if self.scanner is not None and self._position >= len(self._buffer):
            self.touch(self.limits.data_timeout)
            consumed = self.scanner.feed(data)
            if consumed < 0:
                return
            self._buffer, self._position = data[consumed:], 0
            self.data_ended()
        elif self._position < len(self._buffer):
            self._buffer = self._buffer[self._position :] + data
            self._position = 0
        else:
            self._buffer, self._position = data, 0
        self.pump()

    def pump(self) -> None:
        """Run the buffered commands until one has to wait (for the server, for the client to
        read its replies, or for more input), then send their replies in one write."""
        while not (self._task is not None or self.closing or self.lost or self._write_paused):
            buffer, position = self._buffer, self._position
            if self.scanner is not None:
                if position >= len(buffer):
                    break
                chunk = buffer[position:] if position else buffer
                self._buffer, self._position = b"", 0
                self.touch(self.limits.data_timeout)
                consumed = self.scanner.feed(chunk)
                if consumed < 0:
                    break
                self._buffer = chunk[consumed:]
                self.data_ended()
                continue
            newline = buffer.find(b"\n", position)
            if newline < 0:
                if len(buffer) - position > LINE_BUFFER_LIMIT:
                    self._skipping = True
                    self._buffer, self._position = b"", 0
                break
            line = buffer[position : newline + 1]
            self._position = newline + 1
            if self._skipping:
                self._skipping = False
                self.say(LINE_TOO_LONG)
                continue
            self.dispatch_line(line)
        if self.eof and not (self._task is not None or self.closing or self._write_paused):
            self.close()  # the client has sent all it will: a DATA left open is abandoned
        self.flush()
        self._set_reading()

    # -- output --------------------------------------------------------------------------

    def say(self, reply: bytes) -> None:
        self._out.append(reply)

    def flush(self) -> None:
        if not self._out:
            return
        out, self._out = self._out, []
        transport = self.transport
        if transport is None or transport.is_closing() or self.lost:
            return  # nobody reads these replies any more
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    def pause_writing(self) -> None:
        # The client does not read its replies: read no more commands until it does.
        self._write_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.pump()

    def _set_reading(self) -> None:
        """Read while the session can use input: not beyond BUSY_BUFFER while a command works
        for the server (the commit, the handshake), nor while the client's replies pile up."""
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            return
        backlog = self._task is not None and len(self._buffer) - self._position > BUSY_BUFFER
        pause = (backlog or self._write_paused) and not self.closing
        if pause and not self._read_paused:
            self._read_paused = True
            transport.pause_reading()
        elif not pause and self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    # -- work for the server -------------------------------------------------------------

    def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Carry out `work` (a commit, a handshake) while no command is read (the input is
        kept up to BUSY_BUFFER); the buffered commands run once it is done."""
        self.flush()
        self.stop_timer()
        task = self.loop.create_task(work)
        self._task = task
        task.add_done_callback(self._work_done)
        self._set_reading()

    def _work_done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None
        if task.cancelled():
            return
        error = task.exception()
        if self.lost:
            return
        if error is not None:
            # Never the exception's text to the peer: 451 4.3.0, and the log says where.
            log.error(
                "session.failed",
                extra={"event": "session.failed", "error": type(error).__name__},
                exc_info=error,
            )
            self.say(wire(replies.INTERNAL_ERROR))
            self.command_done()
        if not self.closing:
            self.pump()
        self.flush()

    def command_done(self) -> None:
        """A command has answered (subclasses account for it)."""

    def discard_input(self) -> None:
        """Forget what the client has sent and was not read yet (RFC 3207 §4: after
        STARTTLS, until a completed handshake, nothing the client sent is a command)."""
        self._buffer, self._position, self._skipping = b"", 0, False
        self._before_tls = True

    def tls_started(self, transport: asyncio.Transport) -> None:
        """A completed handshake: from now on the session speaks through `transport`."""
        self.transport = transport
        self._read_paused = False  # start_tls resumed the socket below; TLS reads on
        self._buffer, self._position, self._before_tls = b"", 0, False

    @property
    def working(self) -> bool:
        return self._task is not None

    # -- time ----------------------------------------------------------------------------

    def touch(self, duration: float | None = None) -> None:
        """The client has `duration` (the command timeout by default) to send more."""
        self._deadline = self.loop.time() + (duration or self.limits.command_timeout)
        if self._timer is None and not (self.closing or self.lost):
            self._timer = self.loop.call_at(self._deadline, self._timer_fired)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        if self.closing or self.lost or self._task is not None:
            return  # the server is working: no timeout until it has answered
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._timer_fired)
            return
        self.on_timeout()

    # -- the end -------------------------------------------------------------------------

    def close_saying(self, reply: bytes) -> None:
        """Say `reply`, then end the connection (unless it is ending already)."""
        if self.closing or self.lost:
            return
        if self._before_tls:
            # Mid-handshake the socket speaks TLS: a plaintext reply would corrupt it.
            self._out.clear()
        else:
            self.say(reply)
        self.close()

    def close(self) -> None:
        """End the connection on the server's initiative, keeping every reply readable.

        An abortive close (or a close with unread input, which the kernel turns into a reset)
        can destroy replies the client has not read yet. So: the replies, then a half-close
        (FIN) where the transport can, then the client's input is read and discarded until it
        closes too, for at most LINGER_SECONDS."""
        if self.closing:
            return
        self.flush()
        self.closing = True
        self.stop_timer()
        self.scanner_abandoned()
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            return
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        if self.eof or self._before_tls:
            # The client has closed its side (nothing is left unread), or the socket is in a
            # TLS handshake (which a half-close would only cut).
            transport.close()
        elif transport.can_write_eof():
            transport.write_eof()
            self._linger = self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()  # TLS: close_notify after the replies

    def scanner_abandoned(self) -> None:
        """The connection ends in DATA (subclasses log the message left unfinished)."""

    def eof_received(self) -> bool:
        self.eof = True
        if self.closing:
            if self.transport is not None:
                self.transport.close()  # the client has read our last reply and closed
            return False
        if self._task is not None or self._write_paused:
            # A command works for the server (the commit after the end of DATA): it answers,
            # then the session ends, and commands buffered behind it are not read. Replies
            # the client has yet to read are sent, with those of the commands before its EOF.
            return True
        # Every complete command was answered already; a DATA left open is abandoned.
        self.close()
        return True

    def connection_lost(self, error: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.stop_timer()
        if self._linger is not None:
            self._linger.cancel()
        if self.scanner is not None:
            self.scanner_abandoned()
        if self._task is not None:
            self._task.cancel()  # a commit under way is withdrawn (spool/commit.py)
        self._buffer, self._out = b"", []
        self.on_lost()
