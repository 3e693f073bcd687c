"""SPF, DKIM and DMARC verdicts against the zone files of fixtures/dns, never real DNS."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import dkim
import pytest
import spf

from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.message.headers import DkimResult, ReceivedFacts, received_headers
from inbound.message.source import FileSource
from inbound.scan.auth import SPF_VERDICTS, AuthOutcome, authenticate
from inbound.scan.dmarc import DmarcRecord, aligned, organizational_domain, parse_dmarc_record
from inbound.scan.dns import Resolver, ZoneResolver

ROOT = Path(__file__).resolve().parents[3]
ZONES = sorted((ROOT / "fixtures" / "dns").glob("*.zone"))
CORPUS = ROOT / "fixtures" / "corpus" / "eml"
REAL = CORPUS / "real"
ALL_EML = sorted(CORPUS.rglob("*.eml"))
CLIENT = "192.0.2.10"
# RFC 8463 Appendix A.2: the published example ed25519 private key (its public key is in
# fixtures/dns/dmarc.zone as brisbane._domainkey.{reject,relaxed,strict,other}.example).
RFC8463_PRIVATE_KEY = b"nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="

P, F, G, X = Verdict.PASS, Verdict.FAIL, Verdict.GRAY, Verdict.PROCESSING_FAILED


def zones(text: str = "", timeout: float = 1.0) -> ZoneResolver:
    return ZoneResolver.from_files(ZONES, text=text, timeout=timeout)


def check(
    raw: bytes | Path,
    *,
    mail_from: str = "bounce@spf-pass.example",
    helo: str = "mx.sender.example",
    client_ip: str = CLIENT,
    resolver: Resolver | None = None,
    timeout: float = 10.0,
) -> AuthOutcome:
    return asyncio.run(
        authenticate(
            raw if isinstance(raw, bytes) else FileSource(raw),
            client_ip=client_ip,
            helo=helo,
            mail_from=mail_from,
            resolver=resolver or zones(),
            timeout=timeout,
        )
    )


def message(from_header: str = "Alice <alice@sender.example>") -> bytes:
    return (
        f"From: {from_header}\r\nTo: support@inbound.example\r\nSubject: Hello\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@sender.example>\r\n\r\n"
        "Hello there.\r\n"
    ).encode()


def signed(raw: bytes, domain: str, selector: str = "brisbane") -> bytes:
    signature = dkim.sign(
        raw,
        selector.encode(),
        domain.encode(),
        RFC8463_PRIVATE_KEY,
        signature_algorithm=b"ed25519-sha256",
        include_headers=[b"from", b"to", b"subject", b"date"],
    )
    assert isinstance(signature, bytes)
    return signature + raw


def one_byte_changed(raw: bytes) -> bytes:
    """`raw` with the first letter of its body in the other case."""
    body = raw.index(b"\n\n") + 2 if b"\r\n\r\n" not in raw else raw.index(b"\r\n\r\n") + 4
    at = next(i for i in range(body, len(raw)) if chr(raw[i]).isalpha())
    return raw[:at] + bytes([raw[at] ^ 0x20]) + raw[at + 1 :]


# --- SPF ------------------------------------------------------------------------------------

SPF_CASES = [
    # (MAIL FROM, HELO, client IP, RFC 7208 word, SES verdict)
    pytest.param("a@spf-pass.example", "h.example", CLIENT, "pass", P, id="pass"),
    pytest.param("a@spf-fail.example", "h.example", CLIENT, "fail", F, id="fail_dash_all"),
    pytest.param("a@spf-softfail.example", "h.example", CLIENT, "softfail", F, id="softfail"),
    pytest.param("a@spf-neutral.example", "h.example", CLIENT, "neutral", G, id="neutral"),
    pytest.param("a@spf-none.example", "h.example", CLIENT, "none", G, id="none_no_spf_record"),
    pytest.param("a@nowhere.example", "h.example", CLIENT, "none", G, id="none_no_such_domain"),
    pytest.param("a@spf-temperror.example", "h", CLIENT, "temperror", X, id="temperror_timeout"),
    pytest.param("a@spf-servfail.example", "h", CLIENT, "temperror", X, id="temperror_servfail"),
    pytest.param("a@spf-permerror.example", "h", CLIENT, "permerror", F, id="permerror_bad_mech"),
    pytest.param("a@spf-twice.example", "h", CLIENT, "permerror", F, id="permerror_two_records"),
    pytest.param("a@spf-mx.example", "h.example", CLIENT, "pass", P, id="pass_by_mx"),
    pytest.param("a@spf-a6.example", "h.example", "2001:db8::10", "pass", P, id="pass_by_aaaa"),
    pytest.param("a@spf-a6.example", "h.example", CLIENT, "fail", F, id="fail_ipv4_vs_aaaa"),
    pytest.param("a@spf-include.example", "h.example", CLIENT, "pass", P, id="pass_by_include"),
    pytest.param("a@spf-ptr.example", "h.example", CLIENT, "pass", P, id="pass_by_ptr"),
    pytest.param("", "spf-helo.example", CLIENT, "pass", P, id="null_sender_checks_helo"),
    pytest.param("", "spf-fail.example", CLIENT, "fail", F, id="null_sender_helo_fails"),
    pytest.param("", "", CLIENT, "none", G, id="nothing_to_check"),
    pytest.param("a@spf-pass.example", "h", "unknown", "temperror", X, id="no_client_ip"),
]


@pytest.mark.parametrize(("mail_from", "helo", "client_ip", "word", "verdict"), SPF_CASES)
def test_spf(mail_from: str, helo: str, client_ip: str, word: str, verdict: Verdict) -> None:
    outcome = check(
        message(),
        mail_from=mail_from,
        helo=helo,
        client_ip=client_ip,
        resolver=zones(timeout=0.2),
    )
    assert (outcome.details.spf, outcome.spf) == (word, verdict)
    assert SPF_VERDICTS.get(word, X) is verdict
    domain = (mail_from.rpartition("@")[2] or helo) or "check"
    assert domain in outcome.details.spf_explanation


def test_spf_words_go_into_received_spf() -> None:
    outcome = check(message(), mail_from="a@spf-softfail.example")
    facts = ReceivedFacts(
        message_id="0" * 40,
        hostname="mx.inbound.example",
        mail_from="a@spf-softfail.example",
        rcpt_tos=("support@inbound.example",),
        helo="mx.sender.example",
        client_ip=CLIENT,
        rdns=None,
        tls=False,
        received_at=datetime(2026, 11, 23, tzinfo=UTC),
        verdicts=outcome.apply_to(Verdicts()),
        auth=outcome.details,
    )
    headers = dict(received_headers(facts))
    assert headers["Received-SPF"].startswith(
        "softfail (mx.inbound.example: transitioning domain of spf-softfail.example does not "
        "designate 192.0.2.10 as permitted sender) client-ip=192.0.2.10;"
    )
    assert "spf=softfail smtp.mailfrom=a@spf-softfail.example" in headers["Authentication-Results"]


# --- DKIM: the corpus messages that verify offline -----------------------------------------

FOOTBALL = [
    DkimResult("pass", "football.example.com", "brisbane"),
    DkimResult("pass", "football.example.com", "test"),
]
DKIM_CORPUS = [
    pytest.param("dkimpy__rfc6376_signed.eml", P, FOOTBALL, id="dkimpy_rfc6376_ed25519_and_rsa"),
    pytest.param("rspamd__dkim_ed25519.eml", P, FOOTBALL, id="rspamd_ed25519_and_rsa"),
    pytest.param("mimekit__dkim_rfc8463_ed25519.eml", P, FOOTBALL, id="mimekit_rfc8463"),
    pytest.param(
        "mimekit__dkim_gmail.eml",
        P,
        [DkimResult("pass", "gmail.com", "20120113")],
        id="mimekit_gmail_rsa",
    ),
]


@pytest.mark.parametrize(("name", "verdict", "results"), DKIM_CORPUS)
def test_dkim_corpus_passes_with_its_keys(
    name: str, verdict: Verdict, results: list[DkimResult]
) -> None:
    outcome = check(REAL / name)
    assert outcome.dkim is verdict
    assert list(outcome.details.dkim) == results


@pytest.mark.parametrize(("name", "verdict", "results"), DKIM_CORPUS)
def test_dkim_corpus_fails_with_one_body_byte_changed(
    name: str, verdict: Verdict, results: list[DkimResult]
) -> None:
    outcome = check(one_byte_changed((REAL / name).read_bytes()))
    assert outcome.dkim is F
    assert list(outcome.details.dkim) == [DkimResult("fail", r.domain, r.selector) for r in results]


@pytest.mark.parametrize(("name", "verdict", "results"), DKIM_CORPUS)
def test_dkim_corpus_without_keys_is_permerror(
    name: str, verdict: Verdict, results: list[DkimResult]
) -> None:
    outcome = check(REAL / name, resolver=ZoneResolver())
    assert outcome.dkim is F
    assert {r.result for r in outcome.details.dkim} == {"permerror"}


@pytest.mark.parametrize(
    ("name", "verdict", "results"),
    [
        pytest.param("mikel__basic_email.eml", G, [], id="unsigned"),
        pytest.param(
            "dkimpy__ed25519_signed.eml",
            G,  # d=test.ex does not align with From: nobody@example.com
            [DkimResult("fail", "test.ex", "sed")],
            id="unaligned_signature_that_fails",
        ),
        pytest.param(
            "rspamd__dkim_many_sigs.eml",
            F,  # five signatures without b=, and a taugh.com one whose key is not published
            [DkimResult("permerror", f"junk{i}.example.com", f"sel{i}") for i in range(1, 6)]
            + [DkimResult("permerror", "taugh.com", "18457.62be233b.k2206")],
            id="six_signatures_all_reported",
        ),
    ],
)
def test_dkim_corpus_other_messages(name: str, verdict: Verdict, results: list[DkimResult]) -> None:
    outcome = check(REAL / name)
    assert outcome.dkim is verdict
    assert list(outcome.details.dkim) == results


def test_dkim_every_signature_goes_into_authentication_results() -> None:
    outcome = check(REAL / "dkimpy__rfc6376_signed.eml")
    facts = ReceivedFacts(
        message_id="0" * 40,
        hostname="mx.inbound.example",
        mail_from="bounce@spf-pass.example",
        rcpt_tos=(),
        helo="mx.sender.example",
        client_ip=CLIENT,
        rdns=None,
        tls=True,
        received_at=datetime(2026, 11, 23, tzinfo=UTC),
        auth=outcome.details,
    )
    results = dict(received_headers(facts))["Authentication-Results"]
    assert "dkim=pass header.d=football.example.com header.s=brisbane" in results
    assert "dkim=pass header.d=football.example.com header.s=test" in results
    assert "dmarc=pass header.from=football.example.com" in results


def test_dkim_altered_signed_header_fails() -> None:
    raw = signed(message("a@reject.example"), "reject.example")
    outcome = check(raw.replace(b"Subject: Hello", b"Subject: Hellp"))
    assert outcome.dkim is F
    assert outcome.details.dkim == (DkimResult("fail", "reject.example", "brisbane"),)


def test_dkim_key_lookup_timeout_is_temperror() -> None:
    resolver = zones("brisbane._domainkey.football.example.com TIMEOUT", timeout=0.2)
    outcome = check(REAL / "rspamd__dkim_ed25519.eml", resolver=resolver)
    assert outcome.dkim is P  # the rsa signature still passes
    assert [r.result for r in outcome.details.dkim] == ["temperror", "pass"]
    outcome = check(
        signed(message("a@quarantine.example"), "quarantine.example"),
        resolver=zones("brisbane._domainkey.quarantine.example TIMEOUT", timeout=0.2),
    )
    assert outcome.dkim is X


def test_dkim_unreadable_header_never_raises() -> None:
    raw = b" folded first line\r\nDKIM-Signature: v=1; d=odd.example; s=x\r\nFrom: a@odd.example\r\n\r\nx"
    outcome = check(raw)
    assert outcome.dkim is F
    assert outcome.details.dkim == (DkimResult("permerror", "odd.example", ""),)


# --- DMARC ----------------------------------------------------------------------------------


class DmarcCase(NamedTuple):
    from_header: str
    mail_from: str  # "" is the null sender: SPF then checks the HELO name, reject.example
    signer: str  # d= of a signature made with the RFC 8463 key, or "" for unsigned
    verdict: Verdict
    policy: DmarcPolicy | None
    word: str  # RFC 8601 dmarc= result


# fmt: off
DMARC_CASES = [
    pytest.param(DmarcCase("a@reject.example", "b@reject.example", "", P, None, "pass"), id="spf_aligned"),
    pytest.param(DmarcCase("a@reject.example", "b@spf-pass.example", "", F, DmarcPolicy.REJECT, "fail"), id="reject_not_aligned"),
    pytest.param(DmarcCase("a@quarantine.example", "b@spf-pass.example", "", F, DmarcPolicy.QUARANTINE, "fail"), id="quarantine_not_aligned"),
    pytest.param(DmarcCase("a@monitor.example", "b@spf-pass.example", "", F, DmarcPolicy.NONE, "fail"), id="p_none_not_aligned"),
    pytest.param(DmarcCase("a@relaxed.example", "b@bounces.relaxed.example", "", P, None, "pass"), id="spf_relaxed_subdomain_aligns"),
    pytest.param(DmarcCase("a@strict.example", "b@bounces.strict.example", "", F, DmarcPolicy.REJECT, "fail"), id="spf_strict_subdomain_does_not_align"),
    pytest.param(DmarcCase("a@strict.example", "b@strict.example", "", P, None, "pass"), id="spf_strict_exact_aligns"),
    pytest.param(DmarcCase("a@reject.example", "b@spf-fail.example", "reject.example", P, None, "pass"), id="dkim_aligned_spf_fails"),
    pytest.param(DmarcCase("a@news.relaxed.example", "b@spf-fail.example", "relaxed.example", P, None, "pass"), id="dkim_relaxed_parent_signer_aligns"),
    pytest.param(DmarcCase("a@news.strict.example", "b@spf-fail.example", "strict.example", F, DmarcPolicy.REJECT, "fail"), id="dkim_strict_parent_signer_does_not_align"),
    pytest.param(DmarcCase("a@reject.example", "b@spf-fail.example", "other.example", F, DmarcPolicy.REJECT, "fail"), id="dkim_passes_but_not_aligned"),
    pytest.param(DmarcCase("a@news.subpolicy.example", "b@news.subpolicy.example", "", F, DmarcPolicy.QUARANTINE, "fail"), id="subdomain_gets_sp"),
    pytest.param(DmarcCase("a@subpolicy.example", "b@subpolicy.example", "", F, DmarcPolicy.REJECT, "fail"), id="organizational_domain_gets_p"),
    pytest.param(DmarcCase("a@own.subpolicy.example", "b@own.subpolicy.example", "", F, DmarcPolicy.NONE, "fail"), id="subdomain_own_record_wins"),
    pytest.param(DmarcCase("a@news.nosp.example", "b@news.nosp.example", "", F, DmarcPolicy.REJECT, "fail"), id="subdomain_without_sp_gets_p"),
    pytest.param(DmarcCase("a@nodmarc.example", "b@spf-pass.example", "", G, None, "none"), id="no_record"),
    pytest.param(DmarcCase("a@badpolicy.example", "b@spf-pass.example", "", G, None, "none"), id="invalid_p_without_rua"),
    pytest.param(DmarcCase("a@badpolicy-rua.example", "b@spf-pass.example", "", F, DmarcPolicy.NONE, "fail"), id="invalid_p_with_rua_is_p_none"),
    pytest.param(DmarcCase("a@notfirst.example", "b@spf-pass.example", "", G, None, "none"), id="v_not_first"),
    pytest.param(DmarcCase("a@double.example", "b@spf-pass.example", "", G, None, "none"), id="two_records"),
    pytest.param(DmarcCase("a@dmarc-timeout.example", "b@spf-pass.example", "", X, None, "temperror"), id="policy_lookup_times_out"),
    pytest.param(DmarcCase("a@reject.example", "", "", P, None, "pass"), id="null_sender_aligns_by_helo"),
    pytest.param(DmarcCase("a@nodmarc.example, b@reject.example", "c@spf-pass.example", "", F, DmarcPolicy.REJECT, "fail"), id="two_from_domains_worst_counts"),
]
# fmt: on


@pytest.mark.parametrize("case", DMARC_CASES)
def test_dmarc(case: DmarcCase) -> None:
    raw = message(case.from_header)
    if case.signer:
        raw = signed(raw, case.signer)
    helo = "mx.sender.example" if case.mail_from else "reject.example"
    outcome = check(raw, mail_from=case.mail_from, helo=helo, resolver=zones(timeout=0.2))
    assert (outcome.dmarc, outcome.dmarc_policy, outcome.details.dmarc) == (
        case.verdict,
        case.policy,
        case.word,
    )
    if case.signer:
        assert outcome.details.dkim == (DkimResult("pass", case.signer, "brisbane"),)
    verdicts = outcome.apply_to(Verdicts(spam=Verdict.PASS))
    assert (verdicts.dmarc, verdicts.dmarc_policy, verdicts.spam) == (case.verdict, case.policy, P)


def test_dmarc_reports_the_from_domain_that_decided() -> None:
    outcome = check(message("a@nodmarc.example, b@reject.example"))
    assert outcome.details.from_domain == "reject.example"


def test_dkim_verdict_counts_aligned_signatures_only() -> None:
    # The SES DG's Received example: a passing d=amazonses.com signature, From example.com,
    # dkimVerdict GRAY. Here: a passing d=other.example signature on mail From reject.example.
    outcome = check(signed(message("a@reject.example"), "other.example"))
    assert outcome.dkim is G
    outcome = check(signed(message("a@news.relaxed.example"), "relaxed.example"))
    assert outcome.dkim is P


def test_dmarc_aligned_dkim_temperror_is_processing_failed() -> None:
    resolver = zones("brisbane._domainkey.quarantine.example TIMEOUT", timeout=0.2)
    raw = signed(message("a@quarantine.example"), "quarantine.example")
    outcome = check(raw, mail_from="b@spf-fail.example", resolver=resolver)
    assert (outcome.dkim, outcome.dmarc, outcome.dmarc_policy) == (X, X, None)
    assert outcome.details.dmarc == "temperror"


def test_dmarc_without_from_header_is_gray() -> None:
    outcome = check(b"Subject: no author\r\n\r\nbody\r\n")
    assert (outcome.dmarc, outcome.details.dmarc, outcome.details.from_domain) == (G, "none", "")


@pytest.mark.parametrize(
    ("text", "record"),
    [
        pytest.param("v=DMARC1; p=reject", DmarcRecord(DmarcPolicy.REJECT), id="minimal"),
        pytest.param(
            "v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=10",
            DmarcRecord(DmarcPolicy.QUARANTINE, DmarcPolicy.NONE, True, True),
            id="every_tag",
        ),
        pytest.param(" V = dmarc1 ; P = Reject ; ", DmarcRecord(DmarcPolicy.REJECT), id="lenient"),
        pytest.param("v=DMARC1; p=reject; sp=bogus", DmarcRecord(DmarcPolicy.REJECT), id="bad_sp"),
        pytest.param("v=DMARC1; p=bogus", None, id="bad_p"),
        pytest.param("v=DMARC1", None, id="no_p"),
        pytest.param("v=DMARC1; rua=mailto:x@y.example", DmarcRecord(DmarcPolicy.NONE), id="rua"),
        pytest.param("p=reject; v=DMARC1", None, id="v_not_first"),
        pytest.param("v=spf1 -all", None, id="not_dmarc"),
    ],
)
def test_parse_dmarc_record(text: str, record: DmarcRecord | None) -> None:
    assert parse_dmarc_record(text) == record


def test_organizational_domain_is_the_last_two_labels() -> None:
    assert organizational_domain("a.b.Example.COM.") == "example.com"
    assert organizational_domain("example") == "example"
    # The documented limitation: no public suffix list.
    assert organizational_domain("www.example.co.uk") == "co.uk"


@pytest.mark.parametrize(
    ("identifier", "from_domain", "strict", "expected"),
    [
        ("example.com", "EXAMPLE.com.", True, True),
        ("mail.example.com", "example.com", True, False),
        ("mail.example.com", "news.example.com", False, True),
        ("example.net", "example.com", False, False),
        ("", "example.com", False, False),
    ],
)
def test_aligned(identifier: str, from_domain: str, strict: bool, expected: bool) -> None:
    assert aligned(identifier, from_domain, strict=strict) is expected


# --- time limits and robustness ------------------------------------------------------------


def test_dns_timing_out_is_processing_failed_within_the_timeout() -> None:
    # Every lookup would hang for a minute; authenticate() has half a second in all.
    resolver = zones(
        "brisbane._domainkey.football.example.com TIMEOUT\n"
        "test._domainkey.football.example.com TIMEOUT\n"
        "_dmarc.football.example.com TIMEOUT\n",
        timeout=60,
    )

    async def timed() -> tuple[AuthOutcome, float]:
        start = time.monotonic()
        outcome = await authenticate(
            FileSource(REAL / "dkimpy__rfc6376_signed.eml"),
            client_ip=CLIENT,
            helo="mx.sender.example",
            mail_from="a@spf-temperror.example",
            resolver=resolver,
            timeout=0.5,
        )
        return outcome, time.monotonic() - start

    start = time.monotonic()
    outcome, elapsed = asyncio.run(timed())
    assert 0.5 <= elapsed < 0.7
    assert time.monotonic() - start < 1.5  # the SPF worker thread has stopped too
    assert (outcome.spf, outcome.dkim, outcome.dmarc) == (X, X, X)
    assert outcome.details.spf == "temperror"
    assert [r.result for r in outcome.details.dkim] == ["temperror", "temperror"]
    assert outcome.details.dmarc == "temperror"


def test_many_messages_at_once_on_a_small_pool() -> None:
    raw = (REAL / "dkimpy__rfc6376_signed.eml").read_bytes()
    resolver = zones()

    async def many() -> list[AuthOutcome]:
        with ThreadPoolExecutor(max_workers=2) as pool:
            return await asyncio.gather(
                *(
                    authenticate(
                        raw,
                        client_ip=CLIENT,
                        helo="mx.sender.example",
                        mail_from=f"m{i}@spf-mx.example",
                        resolver=resolver,
                        timeout=20,
                        executor=pool,
                    )
                    for i in range(20)
                )
            )

    outcomes = asyncio.run(many())
    assert {(o.spf, o.dkim, o.dmarc) for o in outcomes} == {(P, P, P)}


def test_no_time_at_all_is_processing_failed() -> None:
    outcome = check(REAL / "mimekit__dkim_gmail.eml", timeout=0)
    assert (outcome.spf, outcome.dkim, outcome.dmarc) == (X, X, X)


def test_path_and_bytes_agree() -> None:
    path = REAL / "mimekit__dkim_gmail.eml"
    assert check(path) == check(path.read_bytes())


def test_missing_file_is_processing_failed() -> None:
    outcome = check(REAL / "no-such-message.eml")
    assert (outcome.spf, outcome.dkim, outcome.dmarc) == (P, X, X)


def test_the_corpus_is_there() -> None:
    assert len(ALL_EML) >= 130


@pytest.mark.parametrize("eml", ALL_EML, ids=[p.name for p in ALL_EML])
def test_every_corpus_message_authenticates_without_an_exception(eml: Path) -> None:
    outcome = check(eml, mail_from="bounce@corpus.example", resolver=ZoneResolver())
    assert outcome.spf is G
    assert outcome.dkim in (G, F)  # F: signed, and no key is published anywhere
    assert outcome.dmarc is G
    assert all(r.result in ("permerror", "fail") for r in outcome.details.dkim)


# --- large messages, read from the spool file -----------------------------------------------


def large(raw: bytes, size: int = 1024 * 1024) -> bytes:
    """`raw` with its body grown past what is read inline (a large signed file is read whole)."""
    line = b"x" * 76 + b"\r\n"
    return raw + line * (size // len(line))


def test_dkim_of_a_large_signed_message_file_is_verified_over_its_whole_body(
    tmp_path: Path,
) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(signed(large(message("a@reject.example")), "reject.example"))
    assert check(path).dkim is P
    path.write_bytes(path.read_bytes()[:-3] + b"y\r\n")
    assert check(path).dkim is F, "a changed body byte far past the header is noticed"


def test_a_large_unsigned_message_file_gets_its_verdicts_from_the_header(
    tmp_path: Path,
) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(large(message("a@reject.example")))
    outcome = check(path)
    assert outcome.dkim is G
    assert outcome.details.from_domain == "reject.example"
    assert (outcome.dmarc, outcome.dmarc_policy) == (F, DmarcPolicy.REJECT)


class NoThreads(Executor):
    """An executor that runs nothing: what would need a thread fails the check."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        raise RuntimeError("no thread for this")


class AskedOnly:
    """The zone's answers, only ever awaited: no answer at hand, so SPF takes its thread."""

    def __init__(self, zone: ZoneResolver) -> None:
        self.zone = zone

    async def txt(self, name: str) -> list[str]:
        return await self.zone.txt(name)

    async def a(self, name: str) -> list[str]:
        return await self.zone.a(name)

    async def aaaa(self, name: str) -> list[str]:
        return await self.zone.aaaa(name)

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return await self.zone.mx(name)

    async def ptr(self, name: str) -> list[str]:
        return await self.zone.ptr(name)


# Not those that time out or fail at the server: those answers are never at hand.
AT_HAND_CASES = [c for c in SPF_CASES if c.id not in ("temperror_timeout", "temperror_servfail")]


@pytest.mark.parametrize(("mail_from", "helo", "client_ip", "word", "verdict"), AT_HAND_CASES)
def test_spf_from_answers_at_hand_needs_no_thread_and_agrees_with_the_thread(
    mail_from: str, helo: str, client_ip: str, word: str, verdict: Verdict
) -> None:
    def spf(resolver: Resolver, executor: Executor) -> tuple[str, str]:
        outcome = asyncio.run(
            authenticate(
                message(),
                client_ip=client_ip,
                helo=helo,
                mail_from=mail_from,
                resolver=resolver,
                timeout=2,
                executor=executor,
            )
        )
        return outcome.details.spf, outcome.details.spf_explanation

    on_the_loop = spf(zones(), NoThreads())
    with ThreadPoolExecutor(2) as pool:
        in_a_thread = spf(AskedOnly(zones()), pool)
    assert on_the_loop == in_a_thread
    assert on_the_loop[0] == word


def test_a_senders_next_message_reuses_its_spf_check_while_the_answers_stand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checks = []
    real = spf.query.check

    def counted(self: spf.query, *args: Any) -> Any:
        checks.append(self.d)
        return real(self, *args)

    monkeypatch.setattr(spf.query, "check", counted)
    resolver = zones()

    def from_the_sender() -> AuthOutcome:
        return check(message(), mail_from="a@spf-pass.example", helo="h", resolver=resolver)

    first, second = from_the_sender(), from_the_sender()
    assert first.details == second.details
    assert first.details.spf == "pass"
    assert checks == ["spf-pass.example"], "the second message reused the first's check"
    # The answer changes (a second SPF record is a permerror, RFC 7208 §4.5): checked again.
    resolver.add_text('spf-pass.example TXT "v=spf1 -all"', source="<change>")
    changed = from_the_sender()
    assert changed.details.spf == "permerror"
    assert len(checks) == 2


@pytest.mark.parametrize(
    ("from_header", "mail_from", "published"),
    [
        ("a@reject.example", "b@reject.example", "reject"),  # DMARC passes on SPF alone
        ("a@monitor.example", "b@spf-pass.example", "none"),  # fails, p=none
        ("a@news.subpolicy.example", "b@news.subpolicy.example", "quarantine"),  # sp=
        ("a@nodmarc.example", "b@spf-pass.example", ""),  # no record
    ],
)
def test_the_published_policy_is_kept_whatever_the_result(
    from_header: str, mail_from: str, published: str
) -> None:
    """A forward (when_dmarc) must know p=reject even when DMARC passed here on SPF alone:
    SPF will not pass for the sender's domain at the next hop."""
    outcome = check(message(from_header), mail_from=mail_from)
    assert outcome.details.dmarc_policy == published
