"""The daemons' replies as verdicts: clamd INSTREAM lines, spamd SPAMC/1.5 answers, the gray band."""

from __future__ import annotations

import pytest

from inbound.core.errors import InputError
from inbound.core.verdicts import Verdict
from inbound.scan.clamd import ClamdScanner, parse_clamd_reply
from inbound.scan.result import DaemonError, ScanResult
from inbound.scan.spamd import SpamdScanner, SpamReport, parse_spamd_reply, spam_verdict

PF = Verdict.PROCESSING_FAILED

CLAMD = [
    pytest.param(b"stream: OK\0", Verdict.PASS, "no signature matched", id="clean"),
    pytest.param(b"stream: OK\n", Verdict.PASS, "no signature matched", id="clean_newline_form"),
    pytest.param(
        b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0",
        Verdict.FAIL,
        "Eicar-Test-Signature.UNOFFICIAL",
        id="found",
    ),
    pytest.param(
        b"stream: Win.Test.EICAR_HDB-1 FOUND\0stream: OK\0",
        Verdict.FAIL,
        "Win.Test.EICAR_HDB-1",
        id="first_reply_counts",
    ),
    pytest.param(
        b"INSTREAM size limit exceeded. ERROR\0",
        PF,
        "INSTREAM size limit exceeded: the message is larger than clamd's StreamMaxLength",
        id="stream_limit",
    ),
    pytest.param(
        b"stream: Can't allocate memory ERROR\0",
        PF,
        "error: stream: Can't allocate memory",
        id="error",
    ),
    pytest.param(b"", PF, "connection closed without a reply", id="nothing"),
    pytest.param(b"\0", PF, "connection closed without a reply", id="empty_reply"),
    pytest.param(
        b"stream:  FOUND\0", PF, "unexpected reply: 'stream:  FOUND'", id="found_without_name"
    ),
    pytest.param(
        b"UNKNOWN COMMAND\n", PF, "unexpected reply: 'UNKNOWN COMMAND'", id="unknown_command"
    ),
    pytest.param(b"PONG\0", PF, "unexpected reply: 'PONG'", id="pong"),
    pytest.param(
        b"SPAMD/1.0 76 Bad header line\r\n",
        PF,
        "unexpected reply: 'SPAMD/1.0 76 Bad header line'",
        id="spamd_answered",
    ),
]


@pytest.mark.parametrize(("reply", "verdict", "detail"), CLAMD)
def test_clamd_replies(reply: bytes, verdict: Verdict, detail: str) -> None:
    assert parse_clamd_reply(reply) == ScanResult(verdict, detail)


def test_a_long_clamd_reply_is_cut_in_the_detail() -> None:
    result = parse_clamd_reply(b"x" * 5000)
    assert result.verdict is PF
    assert len(result.detail) < 250


GTUBE_SYMBOLS = (
    b"SPAMD/1.1 0 EX_OK\r\nContent-length: 27\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
    b"GTUBE,NO_RECEIVED,NO_RELAYS"
)

SPAMD = [
    pytest.param(
        GTUBE_SYMBOLS,
        SpamReport(True, 1000.0, 5.0, ("GTUBE", "NO_RECEIVED", "NO_RELAYS")),
        id="gtube",
    ),
    pytest.param(
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -0.0 / 5.0\r\n\r\n",
        SpamReport(False, -0.0, 5.0, ()),
        id="ham_no_symbols",
    ),
    pytest.param(
        b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 2.3 / 5.0\r\n\r\n",
        SpamReport(False, 2.3, 5.0, ()),
        id="check_reply",
    ),
    pytest.param(
        b"SPAMD/1.5 0 EX_OK\r\nspam: yes ; 7 / 6.5\r\ncontent-LENGTH: 5\r\n\r\nA,B,C\r\n",
        SpamReport(True, 7.0, 6.5, ("A", "B", "C")),
        id="header_case_and_integers",
    ),
    pytest.param(
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 3\r\nSpam: False ; -1.5 / 5.0\r\n\r\nA,Bxxxx",
        SpamReport(False, -1.5, 5.0, ("A", "B")),
        id="body_cut_at_content_length",
    ),
]


@pytest.mark.parametrize(("reply", "expected"), SPAMD)
def test_spamd_replies(reply: bytes, expected: SpamReport) -> None:
    assert parse_spamd_reply(reply) == expected


SPAMD_ERRORS = [
    pytest.param(b"", "connection closed without a reply", id="nothing"),
    pytest.param(b"UNKNOWN COMMAND\n", "unexpected reply: 'UNKNOWN COMMAND\\n'", id="clamd"),
    pytest.param(
        b"SPAMD/1.0 76 Bad header line: x\r\n",
        "answered 76 Bad header line: x",
        id="ex_protocol",
    ),
    pytest.param(b"SPAMD/1.1 74 \r\n\r\n", "answered 74", id="ex_ioerr_without_text"),
    pytest.param(
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n",
        "without a valid Spam header",
        id="no_spam_header",
    ),
    pytest.param(
        b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe ; 1 / 5\r\n\r\n",
        "without a valid Spam header",
        id="bad_spam_header",
    ),
    pytest.param(
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n",
        "without a valid Spam header",
        id="headers_not_ended",
    ),
    pytest.param(
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 30\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE",
        "shorter than its Content-length",
        id="truncated_body",
    ),
]


@pytest.mark.parametrize(("reply", "message"), SPAMD_ERRORS)
def test_spamd_errors(reply: bytes, message: str) -> None:
    with pytest.raises(DaemonError) as caught:
        parse_spamd_reply(reply)
    assert message in str(caught.value)


BAND = [
    pytest.param(SpamReport(True, 1000.0, 5.0), 2.0, Verdict.FAIL, id="spam"),
    pytest.param(SpamReport(True, 5.0, 5.0), 2.0, Verdict.FAIL, id="spam_at_threshold"),
    pytest.param(SpamReport(False, -0.0, 5.0), 2.0, Verdict.PASS, id="ham"),
    pytest.param(SpamReport(False, 2.9, 5.0), 2.0, Verdict.PASS, id="just_below_band"),
    pytest.param(SpamReport(False, 3.0, 5.0), 2.0, Verdict.GRAY, id="band_starts"),
    pytest.param(SpamReport(False, 4.9, 5.0), 2.0, Verdict.GRAY, id="in_band"),
    pytest.param(SpamReport(False, 4.9, 5.0), 0.0, Verdict.PASS, id="no_band"),
    pytest.param(SpamReport(False, 5.0, 5.0), 0.0, Verdict.GRAY, id="not_spam_at_threshold"),
    pytest.param(SpamReport(False, 6.0, 8.0), 2.0, Verdict.GRAY, id="site_threshold"),
]


@pytest.mark.parametrize(("report", "band", "verdict"), BAND)
def test_gray_band(report: SpamReport, band: float, verdict: Verdict) -> None:
    assert spam_verdict(report, band).verdict is verdict


def test_spam_detail_has_score_threshold_and_rules() -> None:
    report = SpamReport(True, 1000.0, 5.0, ("GTUBE", "NO_RELAYS"))
    assert spam_verdict(report, 2.0) == ScanResult(
        Verdict.FAIL, "score 1000.0 / 5.0 (GTUBE,NO_RELAYS)"
    )
    assert spam_verdict(SpamReport(False, 0.04, 5.0), 2.0).detail == "score 0.0 / 5.0"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda: ClamdScanner("127.0.0.1:3310", timeout=0),
            "timeout must be positive",
            id="clamd_timeout",
        ),
        pytest.param(
            lambda: ClamdScanner("127.0.0.1:3310", chunk_size=0), "chunk size", id="clamd_chunk"
        ),
        pytest.param(
            lambda: ClamdScanner("nonsense:port"),
            "clamd address 'nonsense:port'",
            id="clamd_address",
        ),
        pytest.param(
            lambda: SpamdScanner("127.0.0.1:783", timeout=-1),
            "timeout must be positive",
            id="spamd_timeout",
        ),
        pytest.param(
            lambda: SpamdScanner("127.0.0.1:783", max_size=0), "max size", id="spamd_size"
        ),
        pytest.param(
            lambda: SpamdScanner("127.0.0.1:783", gray_band=-0.5), "gray band", id="spamd_band"
        ),
        pytest.param(
            lambda: SpamdScanner("127.0.0.1:783", user="a b\r\nX: y"),
            "spamd user",
            id="spamd_user_injection",
        ),
    ],
)
def test_bad_settings_are_input_errors(build: object, message: str) -> None:
    assert callable(build)
    with pytest.raises(InputError, match=message):
        build()


def test_default_ports() -> None:
    assert str(ClamdScanner("localhost").address) == "localhost:3310"
    assert str(SpamdScanner("localhost").address) == "localhost:783"
