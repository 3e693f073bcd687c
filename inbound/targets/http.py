"""The HTTP client of webhooks: urllib3, one pool manager, blocking calls on threads of its own.

`WebhookHttp.post` sends one request and returns whatever the server answered: redirects are
never followed (a 3xx is an answer the webhook's outcome table reads) and nothing is retried
here (retries are the spool's, on its schedule). HTTPS certificates are verified against the
system store, plus the CA certificates of `--webhook-ca` (`INBOUND_WEBHOOK_CA` for the SES
handler and `ses consume`) when given. A connection that fails, a certificate that does not
verify and a timeout raise `TransientActionError`; the message names the endpoint without its
query string (it may carry a token) and never the body.

Connections are reused: one urllib3 `PoolManager` keeps a pool per host. The blocking calls run
on this client's own threads, never on the event loop, and never on asyncio's default executor:
a slow endpoint (up to its `timeout`) must not hold up the spool's file work that runs there.
They are daemon threads: a request in flight never delays the exit after SIGTERM (the message
stays in the spool and is posted again).
The local and the AWS target sets both post through this client (`targets.local`,
`targets.aws`). It must not know the webhook's formats, signatures or outcome table.
"""

from __future__ import annotations

import asyncio
import builtins
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, SSLError, TimeoutError

from inbound.core.errors import InputError, TransientActionError, read_user_file
from inbound.core.services import HttpRequest, HttpResponse

# Threads posting at once; more webhooks wait for one (the scheduler's concurrency bounds them).
MAX_THREADS = 16
# Connections kept per host, and hosts kept.
POOL_SIZE = 8
MAX_HOSTS = 64
# The answer's body is read up to this much (and dropped) so the connection can be reused.
MAX_DRAIN = 64 * 1024
# Added to a request's timeout for the deadline of the whole call, thread hop included:
# urllib3's own timeout normally fires first and says more.
DEADLINE_SLACK = 5.0


T = TypeVar("T")


class DaemonThreads(Executor):
    """At most `limit` calls at once, each on a daemon thread of its own (a thread per call
    costs microseconds next to an HTTP exchange). `ThreadPoolExecutor`'s threads are joined at
    interpreter exit, so a hung endpoint would hold a stopping process for its whole timeout."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()

        def run() -> None:
            with self._slots:  # waits on this thread, never the caller's
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to the awaiting caller
                    future.set_exception(exc)
                else:
                    future.set_result(result)

        threading.Thread(target=run, name="inbound-webhook", daemon=True).start()
        return future


def endpoint(url: str) -> str:
    """The URL as logs and errors show it: scheme, host, port and path, no query string."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verification against the system store, plus `ca_file`'s certificates if given; an
    unusable file is an `InputError` naming it."""
    context = ssl.create_default_context()
    if ca_file is not None:
        data = read_user_file(ca_file, f"--webhook-ca {ca_file}")
        try:
            context.load_verify_locations(cadata=data.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError):
            raise InputError(f"--webhook-ca {ca_file}: no PEM CA certificate in it") from None
    return context


class WebhookHttp:
    """An `HttpClient`: made at start (the CA file is checked then), its pools on first use."""

    def __init__(self, *, ca_file: Path | None = None, max_threads: int = MAX_THREADS) -> None:
        self.ca_file = ca_file
        self._context = tls_context(ca_file)
        self._lock = threading.Lock()
        self._pools: urllib3.PoolManager | None = None
        self._threads = DaemonThreads(max_threads)

    def _started(self) -> urllib3.PoolManager:
        with self._lock:
            if self._pools is None:
                self._pools = urllib3.PoolManager(
                    num_pools=MAX_HOSTS,
                    maxsize=POOL_SIZE,
                    ssl_context=self._context,
                    retries=False,
                )
            return self._pools

    async def post(self, request: HttpRequest) -> HttpResponse:
        pools = self._started()
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._threads, _post, pools, request)
        try:
            return await asyncio.wait_for(call, request.timeout + DEADLINE_SLACK)
        except builtins.TimeoutError:
            raise TransientActionError(
                f"webhook {endpoint(request.url)}: no answer within {request.timeout:g}s"
            ) from None

    def close(self) -> None:
        """Close the kept connections (a new request opens new ones)."""
        with self._lock:
            if self._pools is not None:
                self._pools.clear()
            self._pools = None


def _post(pools: urllib3.PoolManager, request: HttpRequest) -> HttpResponse:
    """One blocking POST (on a client thread)."""
    where = endpoint(request.url)
    try:
        response = pools.request(
            "POST",
            request.url,
            body=request.body,
            headers=dict(request.headers),
            timeout=urllib3.Timeout(total=request.timeout),
            redirect=False,
            retries=False,
            preload_content=False,
        )
    except NewConnectionError as exc:
        # Before TimeoutError: urllib3 makes it a subclass of ConnectTimeoutError.
        raise TransientActionError(f"webhook {where}: {_connection_reason(exc)}") from None
    except TimeoutError:
        raise TransientActionError(
            f"webhook {where}: no answer within {request.timeout:g}s"
        ) from None
    except SSLError as exc:
        # A certificate that does not verify is transient: the operator may fix the chain
        # (or give --webhook-ca) within the retry window.
        raise TransientActionError(f"webhook {where}: TLS failed: {_tls_reason(exc)}") from None
    except HTTPError as exc:
        raise TransientActionError(f"webhook {where}: {_connection_reason(exc)}") from None
    try:
        response.read(MAX_DRAIN)
        drained = response.read(1) == b""
    except HTTPError:
        drained = False  # the status and headers were read: the answer stands
    if drained:
        response.release_conn()
    else:
        response.close()  # a body we do not want: this connection is not reused
    headers = {name.lower(): value for name, value in response.headers.items()}
    return HttpResponse(response.status, response.reason or "", headers)


def _tls_reason(exc: SSLError) -> str:
    cause = exc.args[0] if exc.args else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed ({cause.verify_message})"
    return type(cause).__name__


def _connection_reason(exc: HTTPError) -> str:
    """The reason in words, without urllib3's object reprs (they name the pool, not why)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return f"connection failed ({cause.strerror})"
        cause = cause.__cause__ or cause.__context__
    return f"connection failed ({type(exc).__name__})"
