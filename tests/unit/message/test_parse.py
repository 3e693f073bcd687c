"""`parse_message`: the whole corpus parses, the facts users see are right, hostile mail is survived."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inbound.core.message import Attachment, Header, MessageFacts, MimeLimits
from inbound.message.parse import from_addresses, parse_message

MAX_PARTS = MimeLimits().max_parts
MAX_DEPTH = MimeLimits().max_depth

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
EML = ROOT / "fixtures" / "corpus" / "eml"
CORPUS = sorted(EML.rglob("*.eml"))


def corpus(name: str) -> MessageFacts:
    return parse_message((EML / name).read_bytes())


def attachment_part(headers: str) -> bytes:
    """A two-part message whose second part carries `headers` (CRLF-separated)."""
    return (
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        f"--b\r\n{headers}\r\n\r\nbody\r\n--b--\r\n"
    ).encode()


def nested_multiparts(depth: int) -> bytes:
    opening = "".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(depth)
    )
    closing = "".join(f"\r\n--b{i}--\r\n" for i in reversed(range(depth)))
    return f"Subject: deep\r\n{opening}Content-Type: text/plain\r\n\r\nhi{closing}".encode()


def nested_messages(depth: int) -> bytes:
    """`depth` message/rfc822 wrappers around a part named x.exe: the leaf is at that depth."""
    wrappers = "Content-Type: message/rfc822\r\n\r\n" * depth
    return f"{wrappers}Content-Disposition: attachment; filename=x.exe\r\n\r\nMZ".encode()


# --- the corpus ------------------------------------------------------------------------------


def test_corpus_is_there() -> None:
    assert len(CORPUS) >= 100


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.relative_to(EML).as_posix())
def test_every_corpus_message_parses(path: Path) -> None:
    raw = path.read_bytes()
    facts = parse_message(raw)
    assert facts.size == len(raw)
    assert list(facts.defects) == sorted(set(facts.defects))
    assert not any("\r" in h.value or "\n" in h.value for h in facts.headers)


# --- what a user would notice, on corpus files -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        pytest.param(
            "real/mime4j_mimetools__intl_rfc2047.eml",
            "If you can read this you understand the example... so, cool!",
            id="rfc2047-folded-three-charsets",
        ),
        pytest.param("real/mikel__japanese_iso_2022.eml", "まみむめも", id="rfc2047-utf8-base64"),
        pytest.param(
            "real/mimekit__japanese_iso2022jp.eml",
            "日本語メールテスト (testing Japanese emails)",
            id="rfc2047-iso-2022-jp",
        ),
        pytest.param(
            "real/mikel__attachment_pdf.eml",
            "Another PDF with 🎉 Unicode chars in it 🍿",
            id="raw-utf8",
        ),
        pytest.param(
            "malformed/mikel__invalid_subject_8bit.eml",
            "Forma\ufffd\ufffdo FrenetikPolis: Mega Campanha Final Ver\ufffdo | Cursos de Setembro",
            id="raw-latin1-bytes-replaced",
        ),
        pytest.param(
            "malformed/mikel__bad_encoded_subject_charset_none.eml",
            "=?NONE?B?VEVTVA=?=",
            id="unknown-charset-left-encoded",
        ),
        pytest.param("malformed/mikel__weird_to_header_empty_entry.eml", "", id="empty"),
        pytest.param("malformed/mime4j__no_headers.eml", None, id="absent"),
    ],
)
def test_subject(name: str, subject: str | None) -> None:
    assert corpus(name).subject == subject


@pytest.mark.parametrize(
    ("name", "field", "addresses"),
    [
        pytest.param(
            "malformed/mikel__multiple_from_addresses.eml",
            "from",
            ("tim@powerupdev.com", "concierge@powerupdev.com"),
            id="no-comma-between-addresses",
        ),
        pytest.param(
            "real/spamscope__address_as_display_name.eml",
            "from",
            ("bob@example.com",),
            id="display-name-that-is-an-address",
        ),
        pytest.param(
            "real/spamscope__address_as_display_name.eml",
            "cc",
            ("frank@example.com",),
            id="display-name-that-is-an-address-cc",
        ),
        pytest.param(
            "real/spamscope__address_as_display_name.eml",
            "to",
            ("charlie@example.com", "dave@example.com"),
            id="quoted-name-and-bare-address",
        ),
        pytest.param(
            "real/spamscope__rfc2047_comma_in_name.eml",
            "from",
            ("comma.name@example.com",),
            id="encoded-comma-in-display-name",
        ),
        pytest.param(
            "real/spamscope__rfc2047_comma_in_name.eml",
            "cc",
            ("simple@example.net", "john.doe@example.com"),
            id="encoded-quotes-in-display-name",
        ),
        pytest.param(
            "real/mime4j_mimetools__intl_rfc2047.eml",
            "cc",
            ("PIRARD@vm1.ulg.ac.be",),
            id="case-kept",
        ),
        pytest.param(
            "malformed/mikel__weird_to_header_empty_entry.eml",
            "to",
            ("user-example@aol.com", "e-s-a-s-2200@app.ar.com"),
            id="empty-entry-dropped",
        ),
        pytest.param("malformed/sisimai__bare_cr_bounce.eml", "from", (), id="null-path-dropped"),
        pytest.param(
            "malformed/mimekit__encoded_word_flood_to_header.eml",
            "to",
            ("test@test.com",),
            id="encoded-word-flood",
        ),
        pytest.param(
            "real/mikel__rfc6532_utf8_headers.eml",
            "from",
            ("jdöe@mächine.example",),
            id="utf8-address",
        ),
    ],
)
def test_addresses(name: str, field: str, addresses: tuple[str, ...]) -> None:
    facts = corpus(name)
    found = {"from": facts.from_addresses, "to": facts.to_addresses, "cc": facts.cc_addresses}
    assert found[field] == addresses


@pytest.mark.parametrize(
    ("name", "attachments"),
    [
        pytest.param(
            "real/mikel__attachment_pdf.eml",
            (Attachment("broken.pdf", "application/pdf"),),
            id="pdf",
        ),
        pytest.param(
            "real/mikel__attachment_nonascii_filename.eml",
            (Attachment("ciële.txt", "text/plain"),),
            id="raw-utf8-filename",
        ),
        pytest.param(
            "spam-virus/constructed__eicar_in_forwarded_rfc822.eml",
            (Attachment("eicar.txt", "text/plain"),),
            id="inside-message-rfc822",
        ),
        pytest.param(
            "real/mailpit__mime_attachment.eml",
            (
                Attachment("inline-image.jpg", "image/jpeg"),
                Attachment("Sample PDF.pdf", "application/pdf"),
            ),
            id="inline-with-filename-counts",
        ),
        pytest.param(
            "malformed/mimekit__content_type_missing_subtype.eml",
            (Attachment("document.xml.gz", "application/octet-stream"),),
            id="invalid-type-with-filename",
        ),
        pytest.param(
            "spam-virus/rspamd__eicar_zip_base64_richtext.eml",
            (Attachment("eicar.zip", "text/richtext"),),
            id="declared-type-kept",
        ),
        pytest.param(
            "real/mikel__attachment_with_encoded_name.eml",
            (Attachment("01 Quien Te Dij\ufffdat. Pitbull.mp3", "application/octet-stream"),),
            id="rfc2231-byte-invalid-in-charset",
        ),
        pytest.param("real/mikel__basic_email.eml", (), id="none"),
    ],
)
def test_attachments(name: str, attachments: tuple[Attachment, ...]) -> None:
    assert corpus(name).attachments == attachments


@pytest.mark.parametrize(
    ("name", "defects"),
    [
        pytest.param(
            "malformed/mimekit__multipart_no_end_boundary.eml",
            ("CloseBoundaryNotFoundDefect",),
            id="no-close-boundary",
        ),
        pytest.param(
            "malformed/mime4j__missing_boundary.eml",
            ("MultipartInvariantViolationDefect", "StartBoundaryNotFoundDefect"),
            id="missing-boundary",
        ),
        pytest.param(
            "malformed/cpython__msg_35_no_header_body_separator.eml",
            ("MissingHeaderBodySeparatorDefect",),
            id="no-blank-line",
        ),
        pytest.param("real/mikel__basic_email.eml", (), id="clean"),
    ],
)
def test_defects(name: str, defects: tuple[str, ...]) -> None:
    assert corpus(name).defects == defects


def test_headers_in_order_with_names_as_written_and_decoded_values() -> None:
    facts = corpus("real/mime4j_mimetools__intl_rfc2047.eml")
    assert [h.name for h in facts.headers] == ["From", "To", "CC", "BCC", "Subject", "Content-type"]
    assert facts.headers[1] == Header(
        "To",
        "=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@dkuug.dk>",
        "Keld Jørn Simonsen <keld@dkuug.dk>",
    )


def test_folded_headers_are_unfolded() -> None:
    subject = corpus("real/mime4j_mimetools__intl_rfc2047.eml").headers[4]
    assert subject.value == (
        "=?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?= "
        "=?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?= =?US-ASCII?Q?.._so,_cool!?="
    )
    received = corpus("malformed/mikel__weird_to_header_empty_entry.eml").header_values("Received")
    assert received[0] == (
        "by 10.103.1.1 with SMTP id w10cs50835muo; Thu, 14 Oct 2010 20:25:16 -0700 (PDT)"
    )


@pytest.mark.parametrize("name", ["cc", "CC", "Cc", "cC"])
def test_header_values_is_case_insensitive(name: str) -> None:
    facts = corpus("real/mime4j_mimetools__intl_rfc2047.eml")
    # RFC 2047: the "_" in the encoded word and the space after it are both kept.
    assert facts.header_values(name) == ["André  Pirard <PIRARD@vm1.ulg.ac.be>"]


def test_message_without_headers() -> None:
    raw = (EML / "malformed/mime4j__no_headers.eml").read_bytes()
    assert parse_message(raw) == MessageFacts(
        size=len(raw), defects=("MissingHeaderBodySeparatorDefect",)
    )


# --- constructed messages: decoding details --------------------------------------------------


def b64(text: str, charset: str) -> str:
    return base64.b64encode(text.encode(charset)).decode()


@pytest.mark.parametrize(
    ("header", "subject"),
    [
        pytest.param(f"=?gb2312?B?{b64('王喆', 'gbk')}?=", "王喆", id="gb2312-label-read-as-gbk"),
        pytest.param(
            "Gr\u00fc\u00dfe =?utf-8?q?aus_K=C3=B6ln?=", "Grüße aus Köln", id="raw-utf8-and-encoded"
        ),
        pytest.param("=?utf-8*en?q?hello?=", "hello", id="rfc2231-language-in-charset"),
        pytest.param(
            "=?utf-8?b?QUJDRA?= =?utf-8?b?A?=",
            "=?utf-8?b?QUJDRA?= =?utf-8?b?A?=",
            id="broken-base64-left-encoded",
        ),
        pytest.param(
            "=?utf-8?b?/w==?=", "=?utf-8?b?/w==?=", id="bytes-invalid-in-charset-left-encoded"
        ),
        pytest.param(r"C:\users =?utf-8?q?x?=", r"C:\users x", id="backslash-u-is-not-an-escape"),
    ],
)
def test_subject_decoding(header: str, subject: str) -> None:
    assert parse_message(f"Subject: {header}\r\n\r\n".encode()).subject == subject


def test_addresses_from_every_occurrence_in_order() -> None:
    raw = b"From: a@x\r\nCc: <c@x>, D <d@x>\r\nFrom: =?utf-8?q?B=2C_b?= <b@x>\r\nCc: e@x\r\n\r\n"
    facts = parse_message(raw)
    assert facts.from_addresses == ("a@x", "b@x")
    assert facts.cc_addresses == ("c@x", "d@x", "e@x")
    assert facts.to_addresses == ()


@pytest.mark.parametrize(
    ("headers", "attachment"),
    [
        pytest.param(
            "Content-Type: application/pdf\r\n"
            "Content-Disposition: attachment; filename*=utf-8''%E2%82%AC%20invoice.pdf",
            Attachment("€ invoice.pdf", "application/pdf"),
            id="rfc2231",
        ),
        pytest.param(
            "Content-Type: application/pdf\r\n"
            "Content-Disposition: attachment; filename*0*=utf-8''caf%C3%A9; filename*1=\"-menu.pdf\"",
            Attachment("café-menu.pdf", "application/pdf"),
            id="rfc2231-continuations",
        ),
        pytest.param(
            "Content-Type: text/plain\r\n"
            "Content-Disposition: attachment; filename*=no-such-charset''%E9t%E9.txt",
            Attachment("été.txt", "text/plain"),
            id="rfc2231-unknown-charset",
        ),
        pytest.param(
            f'Content-Type: text/plain; name="=?utf-8?b?{b64("été.txt", "utf-8")}?="',
            Attachment("été.txt", "text/plain"),
            id="rfc2047-name",
        ),
        pytest.param(
            "Content-Type: IMAGE/PNG; name=logo.png", Attachment("logo.png", "image/png"), id="case"
        ),
        pytest.param(
            "Content-Type: text\r\nContent-Disposition: attachment; filename=a.bin",
            Attachment("a.bin", "application/octet-stream"),
            id="invalid-type",
        ),
        pytest.param(
            "Content-Disposition: attachment; filename=a.bin",
            Attachment("a.bin", "application/octet-stream"),
            id="no-type",
        ),
        pytest.param(
            "Content-Disposition: ATTACHMENT", Attachment(None, "text/plain"), id="no-filename"
        ),
        pytest.param(
            "Content-Type: text/plain\r\n"
            "Content-Disposition: attachment; filename*0*=x''%zz; filename*1=y; filename*=a''b",
            Attachment(None, "text/plain"),
            id="rfc2231-invalid-mix",
        ),
        pytest.param(
            "Content-Type: text/plain\r\nContent-Disposition: attachment; filename*=utf\x00-8''a.txt",
            Attachment(None, "text/plain"),
            id="rfc2231-nul-in-charset",
        ),
        pytest.param("Content-Disposition: inline", None, id="inline-without-filename"),
    ],
)
def test_attachment_parameters(headers: str, attachment: Attachment | None) -> None:
    expected = () if attachment is None else (attachment,)
    assert parse_message(attachment_part(headers)).attachments == expected


# --- hostile input ---------------------------------------------------------------------------

HOSTILE = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x00\x00", id="nul-bytes"),
    pytest.param(b"\r" * 10_000, id="only-bare-cr"),
    pytest.param(b"\n" * 10_000, id="only-bare-lf"),
    pytest.param(b"From: a@x\rSubject: hi\r\rbody\r", id="bare-cr-line-endings"),
    pytest.param(b"Subject: " + b"x" * 100_000 + b"\r\n\r\n", id="100k-header-line"),
    pytest.param(b"Subject: a\r\n" + b" b\r\n" * 50_000 + b"\r\n", id="50k-folds"),
    pytest.param(b"X: y\r\n" * 50_000 + b"\r\n", id="50k-headers"),
    pytest.param(b"Subject: =?utf-8?q?hi?= " + b"=?a?q?x" * 2_000 + b"\r\n", id="unclosed-words"),
    pytest.param(b"To: " + b"=?a?q?b?= " * 20_000 + b"\r\n", id="encoded-word-flood"),
    pytest.param(b"From: " + b"(" * 5_000 + b"a@b\r\n", id="nested-comments"),
    pytest.param(b"From: " + b'"\\' * 20_000 + b"\r\n", id="escaped-quotes"),
    pytest.param(b"To: " + b"a@b:" * 5_000 + b"\r\n", id="nested-groups"),
    pytest.param(nested_multiparts(2_000), id="2000-nested-multiparts"),
    pytest.param(nested_messages(3_000), id="3000-nested-rfc822"),
    pytest.param(
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nnever closed',
        id="no-close-boundary",
    ),
    pytest.param(b"Content-Type: multipart/mixed\r\n\r\n--\r\n--\r\n", id="no-boundary-param"),
    pytest.param(
        b"Content-Type: text/plain; charset=none\r\nSubject: =?none?b?VEVTVA=?=\r\n\r\n\xff\x00",
        id="charset-none",
    ),
    pytest.param(
        attachment_part('Content-Type: text/plain; name="' + ";" * 20_000), id="params-flood"
    ),
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_hostile_input_does_not_raise(raw: bytes) -> None:
    assert parse_message(raw).size == len(raw)


def test_empty_input_has_no_facts() -> None:
    assert parse_message(b"") == MessageFacts(size=0)


def test_long_header_line_is_kept_whole() -> None:
    assert parse_message(b"Subject: " + b"x" * 100_000 + b"\r\n\r\n").subject == "x" * 100_000


def test_unclosed_encoded_words_still_decode_the_closed_one() -> None:
    subject = parse_message(b"Subject: =?utf-8?q?hi?= =?a?q?x=?a?q?x\r\n\r\n").subject
    assert subject == "hi =?a?q?x=?a?q?x"


def test_too_deep_for_the_walk_keeps_the_headers_and_says_so() -> None:
    facts = parse_message(nested_multiparts(2_000))
    assert facts.subject == "deep"
    assert facts.mime_limit == "MIME parts nested more than 50 levels deep"


@pytest.mark.parametrize(
    ("depth", "found"), [(MAX_DEPTH, True), (MAX_DEPTH + 1, False)], ids=["at-limit", "beyond"]
)
def test_walk_stops_at_max_depth(depth: int, found: bool) -> None:
    facts = parse_message(nested_messages(depth))
    assert facts.attachments == (
        (Attachment("x.exe", "application/octet-stream"),) if found else ()
    )
    assert facts.mime_limit == (None if found else "MIME parts nested more than 50 levels deep")


def test_walk_stops_at_max_parts() -> None:
    parts = b"".join(
        b"--b\r\nContent-Disposition: attachment; filename=f%d\r\n\r\nx\r\n" % i
        for i in range(MAX_PARTS + 500)
    )
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n"
    facts = parse_message(raw)
    assert len(facts.attachments) == MAX_PARTS - 1  # the multipart itself is one of the parts
    assert facts.attachments[0].filename == "f0"
    assert facts.mime_limit == "more than 1000 MIME parts"


MAIL_BITS = st.sampled_from(
    [
        b"\r\n",
        b"\n",
        b"\r",
        b"\x00",
        b" ",
        b"\t",
        b":",
        b";",
        b",",
        b'"',
        b"(",
        b")",
        b"<",
        b">",
        b"@",
        b"=?",
        b"?=",
        b"?q?",
        b"?b?",
        b"*",
        b"'",
        b"%",
        b"--b",
        b"\xff",
        b"\xc3\xa9",
        b"From: ",
        b"To: ",
        b"Subject: ",
        b"Content-Type: multipart/mixed; boundary=b",
        b"Content-Type: message/rfc822",
        b"Content-Disposition: attachment; filename",
        b"filename*0*=utf-8''",
        b"name*=",
    ]
) | st.binary(max_size=8)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(MAIL_BITS, max_size=120).map(b"".join))
def test_mail_shaped_bytes_never_raise(raw: bytes) -> None:
    facts = parse_message(raw)
    assert facts.size == len(raw)
    assert all(h.name and "\n" not in h.value for h in facts.headers)


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=2_000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert parse_message(raw).size == len(raw)


FROM_BLOCKS = [
    b"",
    b"From: alice@sender.example\r\n",
    b"From: Alice <alice@sender.example>\r\nTo: bob@example.com\r\n\r\n",
    b"fROM:   a@x.example,\r\n\t b@y.example (B)\r\nSubject: hi\r\n",
    b'From: one@a.example\r\nFrom: "Two, T" <two@b.example>\r\n',
    b"From: ceo@bank.example <x@evil.example>\r\n",
    b"From: a@x.example b@y.example\r\n",
    b"From: Team: a@x.example, b@y.example;\r\n",
    b"From: =?utf-8?q?Al=C3=AFce?= <alice@sender.example>\r\n",
    b"From:\r\n alice@sender.example\r\n",
    b"From: <>\r\n",
    b"Subject: no from\r\n",
    # Not plain: the email parser reads these (8-bit, a bare LF, an mbox line, a space before
    # the colon, a fold first, a line that is no field), and both ways must agree.
    b"From: J\xc3\xb6rg <jorg@sender.example>\r\n",
    b"From: alice@sender.example\nTo: bob@example.com\n",
    b"From alice@sender.example Mon Nov 23 10:00:00 2026\r\nFrom: a@x.example\r\n",
    b"From : alice@sender.example\r\n",
    b" folded@first.example\r\nFrom: a@x.example\r\n",
    b"From: a@x.example\r\nnot a field\r\nFrom: b@y.example\r\n",
    b"From: a@x.example",
]


@pytest.mark.parametrize("block", FROM_BLOCKS)
def test_from_addresses_are_those_of_the_whole_parse(block: bytes) -> None:
    assert from_addresses(block) == parse_message(block).from_addresses


_PIECES = st.sampled_from(
    [
        b"From:",
        b"from: ",
        b"To:",
        b"X:",
        b"From ",
        b" ",
        b"\t",
        b"a@x.example",
        b"<b@y.example>",
        b'"Q, R"',
        b"(c)",
        b",",
        b";",
        b":",
        b"=?utf-8?q?=C3=A9?=",
        b"\xc3\xa9",
        b"\r\n",
        b"\n",
        b"\r",
        b"@",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=24).map(b"".join))
def test_from_addresses_agree_with_the_whole_parse_on_any_block(block: bytes) -> None:
    assert from_addresses(block) == parse_message(block).from_addresses
