"""The resolver: zone files for tests, and dnspython against a fake server on the loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from inbound.scan.dns import (
    DnsPythonResolver,
    DnsTemporaryError,
    DnsTimeoutError,
    Resolver,
    ZoneFileError,
    ZoneResolver,
    reverse_name,
)

ROOT = Path(__file__).resolve().parents[3]
ZONES = sorted((ROOT / "fixtures" / "dns").glob("*.zone"))

ZONE = """\
# a comment
; a BIND-style comment
Mixed.Case.example.   TXT   "v=spf1 " "-all"
long.example          TXT   "v=DKIM1; "
    "k=rsa; p=AAAA"
    "BBBB"
bare.example          TXT   v=spf1 ?all
escaped.example       TXT   "say \\"hi\\" \\\\ bye"
two.example           TXT   "first"
two.example           TXT   "second"
host.example          A     192.0.2.10
host.example          AAAA  2001:DB8::10
mail.example          MX    20 mx2.mail.example.
mail.example          MX    10 MX1.mail.example
10.2.0.192.in-addr.arpa  PTR  Host.Example.
slow.example          TIMEOUT
broken.example        SERVFAIL
"""


def ask(call: Callable[[], Awaitable[object]]) -> object:
    return asyncio.run(call())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "name", "expected"),
    [
        pytest.param("txt", "mixed.case.example", ["v=spf1 -all"], id="txt_strings_joined"),
        pytest.param("txt", "MIXED.case.EXAMPLE.", ["v=spf1 -all"], id="names_case_insensitive"),
        pytest.param("txt", "long.example", ["v=DKIM1; k=rsa; p=AAAABBBB"], id="txt_continued"),
        pytest.param("txt", "bare.example", ["v=spf1 ?all"], id="txt_unquoted"),
        pytest.param("txt", "escaped.example", ['say "hi" \\ bye'], id="txt_escapes"),
        pytest.param("txt", "two.example", ["first", "second"], id="txt_two_records_in_order"),
        pytest.param("a", "host.example", ["192.0.2.10"], id="a"),
        pytest.param("aaaa", "host.example", ["2001:db8::10"], id="aaaa_normalised"),
        pytest.param(
            "mx", "mail.example", [(20, "mx2.mail.example"), (10, "mx1.mail.example")], id="mx"
        ),
        pytest.param("ptr", "10.2.0.192.in-addr.arpa", ["host.example"], id="ptr"),
        pytest.param("txt", "host.example", [], id="no_data_is_empty"),
        pytest.param("a", "nowhere.example", [], id="nxdomain_is_empty"),
    ],
)
def test_zone_answers(method: str, name: str, expected: list[object]) -> None:
    resolver = ZoneResolver(ZONE)
    assert ask(lambda: getattr(resolver, method)(name)) == expected


def test_zone_records_every_question() -> None:
    resolver = ZoneResolver(ZONE)
    ask(lambda: resolver.txt("Host.Example."))
    ask(lambda: resolver.mx("mail.example"))
    assert list(resolver.queries) == [("host.example", "TXT"), ("mail.example", "MX")]


def test_a_long_running_zone_keeps_only_its_last_questions() -> None:
    """`inbound serve --dns-zone` answers every message's SPF and DMARC questions: its record of
    them must not grow with the receiver's uptime."""
    resolver = ZoneResolver(ZONE)
    names = [f"q{n}.example" for n in range(ZoneResolver.QUERY_HISTORY + 10)]

    async def every() -> None:
        for name in names:
            await resolver.txt(name)

    asyncio.run(every())
    assert len(resolver.queries) == ZoneResolver.QUERY_HISTORY
    assert resolver.queries[-1] == (f"q{ZoneResolver.QUERY_HISTORY + 9}.example", "TXT")


@pytest.mark.parametrize("method", ["txt", "a", "aaaa", "mx", "ptr"])
def test_zone_timeout_waits_for_the_resolver_timeout(method: str) -> None:
    resolver = ZoneResolver(ZONE, timeout=0.2)
    start = time.monotonic()
    with pytest.raises(DnsTimeoutError, match=r"slow\.example"):
        ask(lambda: getattr(resolver, method)("slow.example"))
    assert 0.2 <= time.monotonic() - start < 1.0


def test_zone_servfail_is_a_temporary_error_at_once() -> None:
    resolver = ZoneResolver(ZONE, timeout=5)
    start = time.monotonic()
    with pytest.raises(DnsTemporaryError, match="server failure") as caught:
        ask(lambda: resolver.txt("broken.example"))
    assert not isinstance(caught.value, DnsTimeoutError)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("lonely.example\n", ":1: expected NAME TYPE", id="no_type"),
        pytest.param("x.example CNAME y.example\n", ":1: unknown type 'CNAME'", id="unknown_type"),
        pytest.param("x.example TXT\n", ":1: TXT needs a value", id="no_value"),
        pytest.param("# c\nx.example A 192.0.2.300\n", ":2: ", id="bad_ipv4"),
        pytest.param("x.example AAAA 192.0.2.1\n", ":1: ", id="ipv4_as_aaaa"),
        pytest.param("x.example MX mx.example\n", ":1: MX needs PREFERENCE", id="mx_no_pref"),
        pytest.param('x.example TXT "a" b\n', ":1: expected only", id="txt_junk_after_quote"),
        pytest.param("x.example TIMEOUT 5\n", ":1: TIMEOUT takes no value", id="timeout_value"),
        pytest.param('  "orphan"\n', ":1: a continuation line", id="orphan_continuation"),
        pytest.param('x.example A 192.0.2.1\n  "more"\n', ":2: a continuation", id="continue_a"),
    ],
)
def test_zone_errors_name_source_and_line(text: str, message: str) -> None:
    resolver = ZoneResolver()
    with pytest.raises(ZoneFileError, match=f"^test.zone{message}"):
        resolver.add_text(text, source="test.zone")


def test_fixture_zone_files_load() -> None:
    assert {path.name for path in ZONES} >= {"spf.zone", "dmarc.zone", "dkim-corpus.zone"}
    resolver = ZoneResolver.from_files(ZONES, text="extra.example TXT x")
    assert ask(lambda: resolver.txt("spf-include.example")) == [
        "v=spf1 include:spf-pass.example -all"
    ]
    assert ask(lambda: resolver.txt("extra.example")) == ["x"]
    key = ask(lambda: resolver.txt("20120113._domainkey.gmail.com"))
    assert isinstance(key, list)
    assert key[0].startswith("v=DKIM1; k=rsa; p=MIIBIjAN")
    assert key[0].endswith("wIDAQAB")


def test_reverse_name() -> None:
    assert reverse_name("192.0.2.10") == "10.2.0.192.in-addr.arpa"
    assert reverse_name("2001:db8::1").endswith(".8.b.d.0.1.0.0.2.ip6.arpa")


def test_zone_resolver_is_a_resolver() -> None:
    resolver: Resolver = ZoneResolver()
    assert ask(lambda: resolver.txt("x.example")) == []


# --- dnspython against a fake server on 127.0.0.1 ----------------------------------------


class FakeServer(asyncio.DatagramProtocol):
    """Answers from a table: a list of rdata texts, or an rcode name, or SILENT (no reply)."""

    def __init__(self, table: dict[tuple[str, str], list[str] | str]) -> None:
        self.table = table
        self.transport: asyncio.DatagramTransport | None = None
        self.questions: list[tuple[str, str]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        key = (question.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(question.rdtype))
        self.questions.append(key)
        entry = self.table.get(key, "NXDOMAIN")
        if entry == "SILENT":
            return
        response = dns.message.make_response(query)
        if isinstance(entry, str):
            response.set_rcode(dns.rcode.from_text(entry))
        elif entry:
            response.answer.append(
                dns.rrset.from_text(question.name, 300, "IN", question.rdtype, *entry)
            )
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


TABLE: dict[tuple[str, str], list[str] | str] = {
    ("spf.example", "TXT"): ['"v=spf1 " "ip4:192.0.2.0/24 -all"', '"other"'],
    ("host.example", "A"): ["192.0.2.10"],
    ("host.example", "AAAA"): ["2001:db8::10"],
    ("mail.example", "MX"): ["10 mx1.mail.example."],
    ("10.2.0.192.in-addr.arpa", "PTR"): ["host.example."],
    ("nodata.example", "TXT"): [],
    ("servfail.example", "TXT"): "SERVFAIL",
    ("refused.example", "TXT"): "REFUSED",
    ("silent.example", "TXT"): "SILENT",
}


def ask_server(method: str, name: str, timeout: float = 2.0) -> object:
    async def run() -> object:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: FakeServer(TABLE), local_addr=("127.0.0.1", 0)
        )
        try:
            port = transport.get_extra_info("sockname")[1]
            resolver: Resolver = DnsPythonResolver(timeout, nameservers=["127.0.0.1"], port=port)
            return await getattr(resolver, method)(name)
        finally:
            transport.close()
            await asyncio.sleep(0)  # the transport closes on the next turn of the loop

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("method", "name", "expected"),
    [
        pytest.param(
            "txt", "spf.example", ["other", "v=spf1 ip4:192.0.2.0/24 -all"], id="txt_joined"
        ),
        pytest.param("a", "host.example", ["192.0.2.10"], id="a"),
        pytest.param("aaaa", "host.example.", ["2001:db8::10"], id="aaaa_final_dot"),
        pytest.param("mx", "mail.example", [(10, "mx1.mail.example")], id="mx"),
        pytest.param("ptr", "10.2.0.192.in-addr.arpa", ["host.example"], id="ptr"),
        pytest.param("txt", "nodata.example", [], id="no_data_is_empty"),
        pytest.param("txt", "missing.example", [], id="nxdomain_is_empty"),
        pytest.param("txt", "a" * 64 + ".example", [], id="impossible_name_is_empty"),
    ],
)
def test_dnspython_answers(method: str, name: str, expected: list[str]) -> None:
    answer = ask_server(method, name)
    assert isinstance(answer, list)
    assert sorted(answer) == sorted(expected)  # an RRset has no order (RFC 2181 §5)


@pytest.mark.parametrize("name", ["servfail.example", "refused.example"])
def test_dnspython_server_failure_is_temporary(name: str) -> None:
    with pytest.raises(DnsTemporaryError) as caught:
        ask_server("txt", name)
    assert not isinstance(caught.value, DnsTimeoutError)


def test_dnspython_silence_times_out_within_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(DnsTimeoutError, match=r"silent\.example"):
        ask_server("txt", "silent.example", timeout=0.3)
    assert time.monotonic() - start < 1.5


def test_dnspython_answers_are_cached_for_their_ttl() -> None:
    """Every message from a domain asks the same SPF and DMARC questions: ask upstream once."""

    async def run() -> list[tuple[str, str]]:
        loop = asyncio.get_running_loop()
        server = FakeServer(TABLE)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: server, local_addr=("127.0.0.1", 0)
        )
        try:
            port = transport.get_extra_info("sockname")[1]
            resolver = DnsPythonResolver(2.0, nameservers=["127.0.0.1"], port=port)
            for _ in range(3):
                assert await resolver.txt("spf.example")
                assert await resolver.a("host.example") == ["192.0.2.10"]
            return server.questions
        finally:
            transport.close()
            await asyncio.sleep(0)

    assert asyncio.run(run()) == [("spf.example", "TXT"), ("host.example", "A")]


def test_dnspython_answers_at_hand_are_those_in_its_cache() -> None:
    """What the cache holds is answered without waiting (SPF then runs on the event loop); the
    rest is None: asked the usual way."""

    async def run() -> list[object]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: FakeServer(TABLE), local_addr=("127.0.0.1", 0)
        )
        try:
            port = transport.get_extra_info("sockname")[1]
            resolver = DnsPythonResolver(2.0, nameservers=["127.0.0.1"], port=port)
            before = resolver.answer_now("spf.example", "TXT")
            await resolver.txt("spf.example")
            await resolver.mx("mail.example")
            await resolver.txt("nodata.example")
            await resolver.txt("missing.example")
            return [
                before,
                sorted(resolver.answer_now("spf.example", "TXT") or []),
                resolver.answer_now("mail.example", "MX"),
                resolver.answer_now("nodata.example", "TXT"),
                resolver.answer_now("missing.example", "TXT"),
                resolver.answer_now("host.example", "A"),
            ]
        finally:
            transport.close()
            await asyncio.sleep(0)

    assert asyncio.run(run()) == [
        None,
        ["other", "v=spf1 ip4:192.0.2.0/24 -all"],
        [(10, "mx1.mail.example")],
        [],
        [],
        None,
    ]


def test_zone_answers_at_hand_but_not_its_failures() -> None:
    resolver = ZoneResolver(
        'spf.example TXT "v=spf1 -all"\nmail.example MX 10 mx.mail.example\n'
        "slow.example TIMEOUT\nbroken.example SERVFAIL\n"
    )
    assert resolver.answer_now("SPF.example.", "TXT") == ["v=spf1 -all"]
    assert resolver.answer_now("mail.example", "MX") == [(10, "mx.mail.example")]
    assert resolver.answer_now("none.example", "A") == []
    assert resolver.answer_now("slow.example", "TXT") is None
    assert resolver.answer_now("broken.example", "TXT") is None
