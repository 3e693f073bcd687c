"""The clamd and spamd scanners against the real daemons (`.ci/real-components.sh`), and their
failure modes against ports where nothing listens and servers that never answer.

The daemons come from `INBOUND_TEST_CLAMD` / `INBOUND_TEST_SPAMD` (set by `.ci/run`); without
them the session starts its own with the script and stops them at the end. Under `CI=true` a
daemon that cannot be started or reached fails the tests; elsewhere they are skipped.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import time
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import TypeVar

import pytest

from inbound.core.verdicts import Verdict
from inbound.message.source import BytesSource, FileSource
from inbound.scan.clamd import ClamdScanner
from inbound.scan.result import ScanResult
from inbound.scan.spamd import SPAMC_MAX_SIZE, SpamdScanner
from tests.conftest import CORPUS_EML, FIXTURES, ROOT
from tests.integration.daemons import Daemons, run, timed
from tests.unavailable import unavailable

# The first test may wait for apt to install the daemons (about a minute on a fresh machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

T = TypeVar("T")
SCRIPT = ROOT / ".ci" / "real-components.sh"
START_TIMEOUT = 240.0
SPAM_VIRUS = CORPUS_EML / "spam-virus"
EICAR_MESSAGES = sorted(SPAM_VIRUS.glob("*eicar*.eml"))
GTUBE_MESSAGES = sorted(SPAM_VIRUS.glob("*gtube*.eml"))
# Ordinary mail that spamd --local scores at 0 or below (well under the gray band), so PASS
# does not hang on a rule's weight; one of them is 87 KB with images.
CLEAN_MESSAGES = [
    CORPUS_EML / "real" / name
    for name in (
        "mikel__basic_email.eml",
        "mikel__attachment_message_rfc822.eml",
        "dkimpy__rfc6376_signed.eml",
        "mimekit__dkim_gmail.eml",
        "sisimai__ses_inbound_bounce_dsn.eml",
        "spamscope__forward_with_images.eml",
    )
]
EICAR_SIGNATURE = "Eicar-Test-Signature.UNOFFICIAL"
TEST_FILE_SIGNATURE = "ClamAV-Test-File.UNOFFICIAL"
# The body signature of fixtures/clamav/inbound-test.ndb (found in Debian's clam.exe).
TEST_FILE_MARKER = b"CLAMessageBoxA"


@pytest.fixture(params=["tcp", "unix"])
def clamd(request: pytest.FixtureRequest, daemons: Daemons) -> ClamdScanner:
    if request.param == "unix":
        if not daemons.clamd_socket:
            unavailable("INBOUND_TEST_CLAMD_SOCKET is not set")
        return ClamdScanner(daemons.clamd_socket, timeout=10)
    return ClamdScanner(daemons.clamd, timeout=10)


@pytest.fixture
def spamd(daemons: Daemons) -> SpamdScanner:
    return SpamdScanner(daemons.spamd, timeout=30)


# -- verdicts from the real daemons --------------------------------------------------------


@pytest.mark.parametrize("path", EICAR_MESSAGES, ids=lambda p: p.stem)
def test_every_eicar_message_is_a_virus(clamd: ClamdScanner, path: Path) -> None:
    # clamd decodes the MIME structure itself (ScanMail), so EICAR is found in a plain body,
    # a base64 attachment, inside an attached message/rfc822 and in the zip of the rspamd
    # sample. That zip *stores* eicar.com uncompressed, so it does not prove that clamd
    # unpacks archives: test_clamd_unpacks_a_deflated_zip does.
    result = run(clamd.scan(FileSource(path)))
    assert result == ScanResult(Verdict.FAIL, EICAR_SIGNATURE)


def test_a_message_in_memory_is_streamed_as_its_file_would_be(
    clamd: ClamdScanner, spamd: SpamdScanner
) -> None:
    # The scanners read through the MessageSource port: a source that is no file at all.
    virus = (SPAM_VIRUS / "constructed__eicar_attachment_base64.eml").read_bytes()
    gtube = (SPAM_VIRUS / "constructed__gtube_plain.eml").read_bytes()
    assert run(clamd.scan(BytesSource(virus))) == ScanResult(Verdict.FAIL, EICAR_SIGNATURE)
    assert run(clamd.scan(BytesSource(gtube))).verdict is Verdict.PASS
    spam = run(spamd.scan(BytesSource(gtube)))
    assert spam.verdict is Verdict.FAIL, spam
    assert "GTUBE" in spam.detail


def test_the_corpus_holds_the_expected_eicar_messages() -> None:
    names = {p.stem for p in EICAR_MESSAGES}
    assert names == {
        "constructed__eicar_attachment_base64",
        "constructed__eicar_body_text",
        "constructed__eicar_in_forwarded_rfc822",
        "constructed__gtube_and_eicar",
        "rspamd__eicar_zip_base64_richtext",
    }


def eicar() -> bytes:
    return base64.b64decode((FIXTURES / "clamav" / "eicar.com.b64").read_text())


def deflated_zip(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


def message_with_attachment(data: bytes, filename: str) -> bytes:
    message = EmailMessage()
    message["From"] = "sender@example.net"
    message["To"] = "support@example.com"
    message["Subject"] = "the files you asked for"
    message.set_content("See the attachment.\n")
    message.add_attachment(data, maintype="application", subtype="zip", filename=filename)
    return message.as_bytes(policy=SMTP)


def test_clamd_unpacks_a_deflated_zip(clamd: ClamdScanner, tmp_path: Path) -> None:
    # Padding makes deflate rewrite the bytes, so the signature is only visible unpacked.
    padded = b"A" * 4096 + TEST_FILE_MARKER + b"A" * 4096
    archive = deflated_zip("clam.exe", padded)
    assert TEST_FILE_MARKER not in archive
    path = tmp_path / "zip.eml"
    path.write_bytes(message_with_attachment(archive, "clam.zip"))
    assert run(clamd.scan(FileSource(path))) == ScanResult(Verdict.FAIL, TEST_FILE_SIGNATURE)

    path.write_bytes(message_with_attachment(deflated_zip("eicar.com", eicar()), "eicar.zip"))
    assert run(clamd.scan(FileSource(path))) == ScanResult(Verdict.FAIL, EICAR_SIGNATURE)


@pytest.mark.parametrize("path", GTUBE_MESSAGES, ids=lambda p: p.stem)
def test_every_gtube_message_is_spam(spamd: SpamdScanner, path: Path) -> None:
    # Includes GTUBE only visible after base64 decoding and in a quoted-printable HTML part.
    result = run(spamd.scan(FileSource(path)))
    assert result.verdict is Verdict.FAIL, result
    assert "GTUBE" in result.detail
    assert result.detail.startswith("score 100")  # GTUBE alone weighs 1000


@pytest.mark.parametrize("path", CLEAN_MESSAGES, ids=lambda p: p.stem)
def test_ordinary_mail_passes_both(clamd: ClamdScanner, spamd: SpamdScanner, path: Path) -> None:
    assert run(clamd.scan(FileSource(path))) == ScanResult(Verdict.PASS, "no signature matched")
    result = run(spamd.scan(FileSource(path)))
    assert result.verdict is Verdict.PASS, result


def test_gtube_is_not_a_virus_and_eicar_is_not_spam(
    clamd: ClamdScanner, spamd: SpamdScanner
) -> None:
    gtube = SPAM_VIRUS / "constructed__gtube_plain.eml"
    virus = SPAM_VIRUS / "constructed__eicar_attachment_base64.eml"
    assert run(clamd.scan(FileSource(gtube))).verdict is Verdict.PASS
    assert run(spamd.scan(FileSource(virus))).verdict is Verdict.PASS


def test_concurrent_scans_keep_their_own_verdicts(clamd: ClamdScanner, spamd: SpamdScanner) -> None:
    paths = [*EICAR_MESSAGES, *CLEAN_MESSAGES] * 3

    async def both() -> tuple[list[ScanResult], list[ScanResult]]:
        viruses = asyncio.gather(*(clamd.scan(FileSource(p)) for p in paths))
        spam = asyncio.gather(*(spamd.scan(FileSource(p)) for p in GTUBE_MESSAGES + CLEAN_MESSAGES))
        return await viruses, await spam

    viruses, spam = run(both())
    assert [r.verdict for r in viruses] == [
        Verdict.FAIL if p in EICAR_MESSAGES else Verdict.PASS for p in paths
    ]
    assert [r.verdict for r in spam] == [Verdict.FAIL] * len(GTUBE_MESSAGES) + [Verdict.PASS] * len(
        CLEAN_MESSAGES
    )


# -- clamd's stream limit ------------------------------------------------------------------


def test_a_message_over_clamds_stream_limit_is_processing_failed(
    clamd: ClamdScanner, daemons: Daemons, tmp_path: Path
) -> None:
    limit = daemons.clamd_stream_max
    if not limit:
        unavailable("INBOUND_TEST_CLAMD_STREAM_MAX is not set")
    if limit > 8 * 1024 * 1024:
        unavailable(f"clamd's StreamMaxLength is {limit} bytes; the test writes more than that")
    fits = tmp_path / "fits.eml"
    fits.write_bytes(b"x" * limit)
    assert run(clamd.scan(FileSource(fits))).verdict is Verdict.PASS

    over = tmp_path / "over.eml"
    over.write_bytes(b"x" * (limit + 1))
    result, elapsed = timed(clamd.scan(FileSource(over)))
    assert result.verdict is Verdict.PROCESSING_FAILED
    assert "INSTREAM size limit exceeded" in result.detail
    assert "StreamMaxLength" in result.detail
    assert elapsed < 5

    # Far over the limit: clamd closes while we are still sending (the BrokenPipeError case).
    over.write_bytes(b"x" * (limit * 4))
    assert "size limit" in run(clamd.scan(FileSource(over))).detail


def test_a_spamd_address_given_to_clamd_is_processing_failed(daemons: Daemons) -> None:
    result = run(ClamdScanner(daemons.spamd, timeout=5).scan(FileSource(CLEAN_MESSAGES[0])))
    assert result.verdict is Verdict.PROCESSING_FAILED
    assert "unexpected reply" in result.detail

    result = run(SpamdScanner(daemons.clamd, timeout=5).scan(FileSource(CLEAN_MESSAGES[0])))
    assert result.verdict is Verdict.PROCESSING_FAILED
    assert "unexpected reply" in result.detail


# -- faults without the daemons ------------------------------------------------------------


def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Kind = type[ClamdScanner] | type[SpamdScanner]
KINDS = [pytest.param(ClamdScanner, id="clamd"), pytest.param(SpamdScanner, id="spamd")]
SAMPLE = CLEAN_MESSAGES[0]


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_listening_is_processing_failed_at_once(kind: Kind) -> None:
    result, elapsed = timed(kind(f"127.0.0.1:{unused_port()}", timeout=10).scan(FileSource(SAMPLE)))
    assert result.verdict is Verdict.PROCESSING_FAILED
    assert "connection refused" in result.detail
    assert elapsed < 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_unix_socket_is_processing_failed(kind: Kind, tmp_path: Path) -> None:
    result = run(kind(f"unix:{tmp_path}/absent.sock", timeout=10).scan(FileSource(SAMPLE)))
    assert result.verdict is Verdict.PROCESSING_FAILED
    assert "no socket at that path" in result.detail


@dataclass
class FakeServer:
    """A TCP server on port 0 that does `behaviour` with each connection."""

    port: int
    connections: int = 0


async def with_fake_server(
    behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    client: Callable[[str], Awaitable[T]],
) -> tuple[T, FakeServer]:
    writers: list[asyncio.StreamWriter] = []
    fake = FakeServer(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fake.connections += 1
        writers.append(writer)
        await behaviour(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        return await client(f"127.0.0.1:{fake.port}"), fake
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def swallow_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, read everything, never answer (a hung daemon)."""
    while await reader.read(65536):
        pass
    await asyncio.Event().wait()


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_that_never_answers_is_processing_failed_within_the_timeout(kind: Kind) -> None:
    timeout = 0.5
    start = time.monotonic()
    result, fake = run(
        with_fake_server(
            swallow_forever, lambda address: kind(address, timeout=timeout).scan(FileSource(SAMPLE))
        )
    )
    elapsed = time.monotonic() - start
    assert fake.connections == 1
    assert result.verdict is Verdict.PROCESSING_FAILED
    assert f"no reply within {timeout:g} s" in result.detail
    assert timeout <= elapsed < timeout + 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_that_hangs_up_is_processing_failed(kind: Kind) -> None:
    result, _ = run(
        with_fake_server(hang_up, lambda address: kind(address, timeout=5).scan(FileSource(SAMPLE)))
    )
    assert result.verdict is Verdict.PROCESSING_FAILED
    assert result.detail.startswith(("clamd at 127.0.0.1:", "spamd at 127.0.0.1:"))


def test_a_message_over_the_spamc_limit_is_gray_and_never_sent(tmp_path: Path) -> None:
    big = tmp_path / "big.eml"
    big.write_bytes(b"Subject: big\r\n\r\n" + b"x" * SPAMC_MAX_SIZE)
    # Nothing listens there: a GRAY proves the message was not sent.
    result = run(SpamdScanner(f"127.0.0.1:{unused_port()}").scan(FileSource(big)))
    assert result.verdict is Verdict.GRAY
    assert result.detail.startswith("too large to scan")


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreadable_message_is_processing_failed(kind: Kind, tmp_path: Path) -> None:
    gone = tmp_path / "gone.eml"
    result, fake = run(
        with_fake_server(swallow_forever, lambda address: kind(address).scan(FileSource(gone)))
    )
    assert result.verdict is Verdict.PROCESSING_FAILED
    assert result.detail.startswith("cannot read the message")
    assert fake.connections == 0
