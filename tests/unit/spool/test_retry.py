"""The spool's records round-trip through JSON, and the retry schedule (SPEC section 7)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inbound.core.envelope import Connection, Envelope
from inbound.core.message import Attachment, Header, MessageFacts
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.message.headers import AuthDetails, DkimResult
from inbound.spool.retry import (
    DispatchState,
    SpoolMeta,
    StepRecord,
    is_due,
    is_expired,
    next_attempt_at,
    next_delay,
    window_start,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
FOUR_HOURS = timedelta(hours=4)
MESSAGE_ID = "0123456789abcdefghijklmnopqrstuvwxyz0123"


def through_text(data: dict[str, object]) -> dict[str, object]:
    """What comes back from disk: JSON text, parsed again."""
    loaded: dict[str, object] = json.loads(json.dumps(data))
    return loaded


def make_meta(**changes: object) -> SpoolMeta:
    fields: dict[str, object] = {
        "message_id": MESSAGE_ID,
        "envelope": Envelope("sender@example.org", ("a@example.com", "b@example.com")),
        "connection": Connection.of("203.0.113.5", "mx.example.org", tls=True),
        "received_at": datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "rules_digest": "ab" * 32,
        "hostname": "inbound-1",
        "verdicts": Verdicts(
            Verdict.PASS, Verdict.FAIL, Verdict.GRAY, Verdict.PASS, Verdict.FAIL, DmarcPolicy.REJECT
        ),
        "size": 1234,
    }
    fields.update(changes)
    return SpoolMeta(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "meta",
    [
        pytest.param(make_meta(), id="ipv4_all_verdicts_with_policy"),
        pytest.param(make_meta(connection=Connection.of("2001:db8::1")), id="ipv6"),
        pytest.param(
            make_meta(
                auth=AuthDetails(
                    spf="softfail",
                    spf_explanation="mx.test: domain of example.org does not designate 203.0.113.5",
                    dkim=(DkimResult("pass", "example.org", "s1"), DkimResult("fail", "x.test")),
                    dmarc="fail",
                    from_domain="example.org",
                )
            ),
            id="authentication_details",
        ),
        pytest.param(
            make_meta(envelope=Envelope("", ("ü@exämple.com",))), id="null_sender_utf8_recipient"
        ),
        pytest.param(make_meta(verdicts=Verdicts()), id="default_verdicts_no_policy"),
        pytest.param(
            make_meta(
                facts=MessageFacts(
                    size=1234,
                    headers=(Header("Subject", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "Grüße"),),
                    from_addresses=("a@example.org",),
                    to_addresses=("b@example.com",),
                    cc_addresses=("c@example.com",),
                    subject="Grüße",
                    attachments=(Attachment("x.exe", "application/octet-stream"),),
                    defects=("CloseBoundaryNotFoundDefect",),
                    mime_limit="more than 1000 MIME parts",
                )
            ),
            id="message_facts_read_at_receipt",
        ),
        pytest.param(make_meta(facts=MessageFacts(size=9)), id="facts_of_nothing"),
    ],
)
def test_meta_round_trips_exactly(meta: SpoolMeta) -> None:
    back = SpoolMeta.from_json(through_text(meta.to_json()))
    assert back == meta
    assert type(back.connection.client_ip) is type(meta.connection.client_ip)
    assert back.received_at.utcoffset() == timedelta(0)


def test_meta_spooled_before_authentication_reads_as_not_checked() -> None:
    data = through_text(make_meta().to_json())
    del data["auth"]
    assert SpoolMeta.from_json(data).auth == AuthDetails()


def test_meta_spooled_before_facts_were_kept_has_none() -> None:
    data = through_text(make_meta().to_json())
    del data["facts"]
    assert SpoolMeta.from_json(data).facts is None


def test_meta_json_uses_enum_values_and_ip_strings() -> None:
    data = make_meta().to_json()
    assert data["connection"] == {"client_ip": "203.0.113.5", "helo": "mx.example.org", "tls": True}
    assert data["verdicts"] == {
        "spam": "PASS",
        "virus": "FAIL",
        "spf": "GRAY",
        "dkim": "PASS",
        "dmarc": "FAIL",
        "dmarc_policy": "reject",
    }
    assert data["received_at"] == "2024-05-01T12:00:00.123456+00:00"


verdicts = st.sampled_from(Verdict)
metas = st.builds(
    SpoolMeta,
    message_id=st.just(MESSAGE_ID),
    envelope=st.builds(
        Envelope,
        st.just("") | st.emails(),
        st.lists(st.emails(), min_size=1, max_size=5).map(tuple),
    ),
    connection=st.builds(Connection, st.ip_addresses(), st.text(max_size=20), st.booleans()),
    received_at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    rules_digest=st.text("0123456789abcdef", min_size=64, max_size=64),
    hostname=st.text(min_size=1, max_size=20),
    verdicts=st.builds(
        Verdicts,
        verdicts,
        verdicts,
        verdicts,
        verdicts,
        verdicts,
        st.none() | st.sampled_from(DmarcPolicy),
    ),
    size=st.integers(0, 40 * 1024 * 1024),
)


@settings(max_examples=200, deadline=None)
@given(meta=metas)
def test_meta_round_trip_property(meta: SpoolMeta) -> None:
    assert SpoolMeta.from_json(through_text(meta.to_json())) == meta


def test_state_round_trips_exactly() -> None:
    state = DispatchState(
        steps={
            "0:0": StepRecord("succeeded", 1, None, "CONTINUE"),
            "2:1": StepRecord("failed", 3, "SlowDown: please reduce your request rate", None),
        },
        attempts=3,
        next_attempt_at=T0 + timedelta(minutes=4),
        last_error="action 2:1 failed",
        dead_reason=None,
        retried_at=T0,
    )
    assert DispatchState.from_json(through_text(state.to_json())) == state
    assert DispatchState.from_json(through_text(DispatchState().to_json())) == DispatchState()


def test_state_rejects_unknown_outcome() -> None:
    data = DispatchState(steps={"0:0": StepRecord("failed", 1)}).to_json()
    data["steps"]["0:0"]["outcome"] = "maybe"
    with pytest.raises(ValueError, match="outcome"):
        DispatchState.from_json(data)


def test_succeeded_only_for_succeeded_steps() -> None:
    state = DispatchState(steps={"0:0": StepRecord("succeeded", 1), "0:1": StepRecord("failed", 2)})
    assert state.succeeded("0:0")
    assert not state.succeeded("0:1")
    assert not state.succeeded("1:0")


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        pytest.param(1, 60.0, id="first_is_base"),
        pytest.param(2, 120.0, id="second_doubles"),
        pytest.param(6, 1920.0, id="sixth"),
        pytest.param(7, 3600.0, id="seventh_capped"),
        pytest.param(10_000, 3600.0, id="huge_attempt_capped_without_overflow"),
    ],
)
def test_next_delay_doubles_up_to_the_cap(attempt: int, expected: float) -> None:
    assert next_delay(attempt) == expected


def test_next_delay_with_own_base_and_cap() -> None:
    assert [next_delay(n, base=1.5, cap=10.0) for n in range(1, 6)] == [1.5, 3.0, 6.0, 10.0, 10.0]
    assert next_delay(5000, base=1e300, cap=1e308) == 1e308


@pytest.mark.parametrize(
    ("attempt", "base", "cap"),
    [
        pytest.param(0, 60.0, 3600.0, id="attempt_zero"),
        pytest.param(1, 0.0, 1.0, id="zero_base"),
        pytest.param(1, 10.0, 5.0, id="cap_below_base"),
    ],
)
def test_next_delay_rejects_nonsense(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError, match=r"attempt must be|need 0 < base"):
        next_delay(attempt, base=base, cap=cap)


@pytest.mark.parametrize(
    ("age", "expired"),
    [
        pytest.param(timedelta(0), False, id="just_received"),
        pytest.param(FOUR_HOURS - timedelta(microseconds=1), False, id="just_before"),
        pytest.param(FOUR_HOURS, True, id="exactly_max_age"),
        pytest.param(FOUR_HOURS + timedelta(days=1), True, id="long_after"),
    ],
)
def test_is_expired_at_the_boundary(age: timedelta, expired: bool) -> None:
    assert is_expired(T0, T0 + age, FOUR_HOURS) is expired


def test_is_expired_compares_instants_across_offsets() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert not is_expired(T0, (T0 + timedelta(hours=3)).astimezone(plus_two), FOUR_HOURS)
    assert is_expired(T0.astimezone(plus_two), T0 + FOUR_HOURS, FOUR_HOURS)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        is_expired(datetime(2024, 5, 1), T0, FOUR_HOURS)
    with pytest.raises(ValueError, match="timezone-aware"):
        is_due(DispatchState(next_attempt_at=datetime(2024, 5, 1)), T0)


def test_next_attempt_backs_off_then_meets_the_deadline_then_gives_up() -> None:
    now = T0 + timedelta(minutes=1)
    assert next_attempt_at(1, T0, now, FOUR_HOURS) == now + timedelta(minutes=1)
    late = T0 + FOUR_HOURS - timedelta(minutes=10)
    assert next_attempt_at(9, T0, late, FOUR_HOURS) == T0 + FOUR_HOURS
    assert next_attempt_at(10, T0, T0 + FOUR_HOURS, FOUR_HOURS) is None


def test_a_whole_schedule_stays_inside_the_window() -> None:
    now, attempt, times = T0, 1, []
    while (when := next_attempt_at(attempt, T0, now, FOUR_HOURS)) is not None:
        assert now < when <= T0 + FOUR_HOURS
        times.append(when)
        now, attempt = when, attempt + 1
    assert times[-1] == T0 + FOUR_HOURS
    assert len(times) == 9  # 1, 2, 4, ..., 32 minutes, then hourly twice, then the deadline


def test_window_starts_at_the_operators_retry() -> None:
    assert window_start(T0, DispatchState()) == T0
    later = T0 + timedelta(days=2)
    assert window_start(T0, DispatchState(retried_at=later)) == later


@pytest.mark.parametrize(
    ("state", "due"),
    [
        pytest.param(DispatchState(), True, id="never_attempted"),
        pytest.param(DispatchState(next_attempt_at=T0), True, id="exactly_now"),
        pytest.param(DispatchState(next_attempt_at=T0 + timedelta(seconds=1)), False, id="later"),
        pytest.param(DispatchState(dead_reason="expired"), False, id="dead"),
    ],
)
def test_is_due(state: DispatchState, due: bool) -> None:
    assert is_due(state, T0) is due


def test_the_published_dmarc_policy_round_trips_and_older_meta_reads() -> None:
    meta = make_meta()
    kept = replace(meta, auth=replace(meta.auth, dmarc_policy="reject"))
    assert SpoolMeta.from_json(through_text(kept.to_json())).auth.dmarc_policy == "reject"
    older = through_text(kept.to_json())
    auth = older["auth"]
    assert isinstance(auth, dict)
    del auth["dmarc_policy"]  # spooled before forwarding existed
    assert SpoolMeta.from_json(older).auth.dmarc_policy == ""
