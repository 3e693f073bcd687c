"""Properties of rule evaluation (SPEC sections 1, 2 and 6) over generated rule sets.

The alphabets are small on purpose, so that patterns, recipients, domains and Lambda results
collide often. Each property checks the engine's `Plan` against the SPEC directly, and the
recipient matching against an independent oracle written here from SPEC section 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st

from inbound.actions import ActionModel, BounceAction, LambdaAction, StopAction
from inbound.cli.render import plan_json
from inbound.core.envelope import Connection, Envelope
from inbound.core.message import MessageFacts
from inbound.core.plan import ActionStep, Plan
from inbound.core.verdicts import Verdicts
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import evaluate, results_by_function
from inbound.rules.model import RuleSet

MESSAGE_ID = "0123456789abcdefghijklmnopqrstuvwxyz0123"
CLIENT_IP = "203.0.113.5"
LOCALS = ("a", "b", "sales", "a+x")
DOMAINS = ("example.com", "sub.example.com", "a.sub.example.com", "example.org", "other.net")
OWN_DOMAINS = ("example.com", "example.org")
FUNCTIONS = ("f1", "f2")
DISPOSITIONS = ("STOP_RULE", "STOP_RULE_SET", "CONTINUE", "garbage")
BOUNCES = (("550", "5.1.1"), ("450", "4.2.0"))
STOPPING = ("STOP_RULE", "STOP_RULE_SET")
ENDING = ("Stop", "STOP_RULE_SET")
DELIVERING = frozenset({"S3", "SNS", "Lambda", "WorkMail", "Connect"})
TOPIC = "arn:aws:sns:us-east-1:123456789012:mail"

PROPERTY = settings(max_examples=200, deadline=None)

Action = dict[str, str]


# --- Generation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenRule:
    name: str
    enabled: bool
    recipients: tuple[str, ...]
    tls_policy: str
    actions: tuple[Action, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "enabled": self.enabled,
            "recipients": list(self.recipients),
            "tls_policy": self.tls_policy,
            "actions": [dict(a) for a in self.actions],
        }


@dataclass(frozen=True)
class Scenario:
    domains: tuple[str, ...]
    rules: tuple[GenRule, ...]
    mail_from: str
    rcpts: tuple[str, ...]
    tls: bool
    results: dict[str, str] = field(default_factory=dict)

    def rule_set(self) -> dict[str, object]:
        return {
            "version": 1,
            "name": "props",
            "domains": list(self.domains),
            "rules": [r.as_dict() for r in self.rules],
        }


def _cased(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from((text.lower(), text.upper(), text.title()))


ADDRESSES = st.builds(
    lambda local, domain: f"{local}@{domain}", st.sampled_from(LOCALS), st.sampled_from(DOMAINS)
).flatmap(_cased)
PATTERNS = st.one_of(
    ADDRESSES,
    st.sampled_from(DOMAINS).flatmap(_cased),
    st.sampled_from(DOMAINS).map(lambda d: "." + d).flatmap(_cased),
)


def _lambda(function: str, invocation_type: str) -> Action:
    return {
        "type": "lambda",
        "function_arn": f"arn:aws:lambda:us-east-1:123456789012:function:{function}",
        "invocation_type": invocation_type,
    }


def _bounce(codes: tuple[str, str]) -> Action:
    reply_code, status_code = codes
    return {
        "type": "bounce",
        "smtp_reply_code": reply_code,
        "status_code": status_code,
        "message": f"bounced with {reply_code}",
        "sender": "mailer-daemon@example.com",
    }


def _recipients(domains: list[str]) -> st.SearchStrategy[str]:
    """Envelope recipients at every domain, at our domains more often: most mail is for us."""
    ours = tuple(d for d in DOMAINS if _ours(d, tuple(domains)))
    return st.builds(
        lambda local, domain: f"{local}@{domain}",
        st.sampled_from(LOCALS),
        st.sampled_from((*DOMAINS, *ours, *ours)),
    ).flatmap(_cased)


# Every action the generator uses, with request_response Lambdas (the only way to STOP_RULE)
# listed twice and `stop` once, so that evaluation often goes past the first rule.
ACTIONS: st.SearchStrategy[Action] = st.sampled_from(
    (
        {"type": "s3", "bucket": "mail", "prefix": "in/"},
        {"type": "sns", "topic_arn": TOPIC},
        *(_lambda(f, "event") for f in FUNCTIONS),
        *(_lambda(f, "request_response") for f in FUNCTIONS * 2),
        *(_bounce(codes) for codes in BOUNCES),
        {"type": "add_header", "name": "X-Rule", "value": "seen"},
        {"type": "stop"},
    )
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    domains = draw(st.lists(st.sampled_from(OWN_DOMAINS), min_size=1, max_size=2, unique=True))
    count = draw(st.sampled_from(range(7)))  # uniform: hypothesis favours small integers
    rules = tuple(
        GenRule(
            name=f"r{i}",
            # Biased towards rules that apply, so that the plans have several rules.
            enabled=draw(st.sampled_from((True, True, False))),
            recipients=draw(
                st.one_of(st.just(()), st.lists(PATTERNS, min_size=1, max_size=3).map(tuple))
            ),
            tls_policy=draw(st.sampled_from(("optional", "optional", "require"))),
            actions=tuple(draw(st.lists(ACTIONS, max_size=5))),
        )
        for i in range(count)
    )
    return Scenario(
        domains=tuple(domains),
        rules=rules,
        mail_from=draw(st.sampled_from(("", "alice@sender.example"))),
        rcpts=tuple(draw(st.lists(_recipients(domains), min_size=1, max_size=4))),
        tls=draw(st.booleans()),
        results=draw(
            st.fixed_dictionaries(
                {}, optional={f: st.sampled_from(DISPOSITIONS) for f in FUNCTIONS}
            )
        ),
    )


def _compile(scenario: Scenario) -> CompiledRuleSet:
    return CompiledRuleSet.build(RuleSet.model_validate(scenario.rule_set()))


def _evaluate(rules: CompiledRuleSet, scenario: Scenario) -> Plan:
    return evaluate(
        rules,
        message_id=MESSAGE_ID,
        connection=Connection.of(CLIENT_IP, tls=scenario.tls),
        envelope=Envelope(scenario.mail_from, scenario.rcpts),
        message=MessageFacts(size=100),
        verdicts=Verdicts(),
        lambda_results=results_by_function(scenario.results),
    )


# --- Oracle (SPEC section 2, Matching), independent of inbound.rules.match --------------------


def _parts(address: str) -> tuple[str, str]:
    local, _, domain = address.lower().rpartition("@")
    return local, domain


def _ours(domain: str, domains: tuple[str, ...]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in domains)


def _pattern_matches(pattern: str, address: str) -> bool:
    wanted = pattern.lower()
    local, domain = _parts(address)
    if "@" in wanted:
        user, _, at_domain = wanted.partition("@")
        return domain == at_domain and (local == user or local.startswith(user + "+"))
    if wanted.startswith("."):
        return domain.endswith(wanted)  # any depth below, never the parent itself
    return domain == wanted


def _rule_matches(rule: GenRule, address: str, domains: tuple[str, ...] | None) -> bool:
    """`domains=None`: empty recipients match any address (the index's documented contract:
    its caller has already refused domains that are not ours)."""
    if not rule.recipients:
        return domains is None or _ours(_parts(address)[1], domains)
    return any(_pattern_matches(p, address) for p in rule.recipients)


def _oracle(scenario: Scenario, address: str, domains: tuple[str, ...] | None) -> tuple[int, ...]:
    return tuple(
        i
        for i, rule in enumerate(scenario.rules)
        if rule.enabled and _rule_matches(rule, address, domains)
    )


def _expected_reply(scenario: Scenario, address: str) -> tuple[int, str]:
    if not _ours(_parts(address)[1], scenario.domains):
        return 550, "5.7.1"
    matched = _oracle(scenario, address, scenario.domains)
    if not matched:
        return 550, "5.1.1"
    if not scenario.tls and all(scenario.rules[i].tls_policy == "require" for i in matched):
        return 530, "5.7.0"
    return 250, "2.1.5"


def _steps(plan: Plan) -> list[tuple[str, ActionStep]]:
    return [(run.name, step) for run in plan.rules for step in run.actions]


def _delivers(step: ActionStep) -> bool:
    # SPEC section 2, Bounce: the actions that store or deliver the message.
    delivers = step.action.receipt_type in DELIVERING
    assert delivers is (isinstance(step.action, ActionModel) and step.action.delivers)
    return delivers


def _stops(step: ActionStep) -> bool:
    action = step.action
    return isinstance(action, StopAction) or (
        isinstance(action, LambdaAction)
        and action.invocation_type == "request_response"
        and step.disposition in STOPPING
    )


# Cases the generator reaches only now and then, pinned with @example.
STOP_RULE_THEN_NEXT_RULE = Scenario(
    domains=("example.com",),
    rules=(
        GenRule("r0", True, (), "optional", (_lambda("f1", "request_response"), {"type": "stop"})),
        GenRule("r1", True, ("a@example.com",), "optional", ({"type": "s3", "bucket": "mail"},)),
    ),
    mail_from="alice@sender.example",
    rcpts=("A+x@Example.com",),
    tls=False,
    results={"f1": "STOP_RULE"},
)
BOUNCE_AFTER_HEADER = Scenario(
    domains=("example.com",),
    rules=(
        GenRule("r0", True, (".example.com",), "optional", (_bounce(BOUNCES[0]),)),
        GenRule("r1", True, (), "optional", ({"type": "add_header", "name": "X-A", "value": "1"},)),
        GenRule(
            "r2", True, (), "optional", (_bounce(BOUNCES[1]), {"type": "sns", "topic_arn": TOPIC})
        ),
    ),
    mail_from="",
    rcpts=("b@example.com",),
    tls=True,
)
BOUNCE_AFTER_DELIVERY = Scenario(
    domains=("example.com",),
    rules=(GenRule("r0", True, (), "optional", (_lambda("f2", "event"), _bounce(BOUNCES[0]))),),
    mail_from="",
    rcpts=("b@example.com",),
    tls=True,
)


# --- Properties ------------------------------------------------------------------------------


@PROPERTY
@given(scenarios())
def test_evaluation_is_deterministic(scenario: Scenario) -> None:
    rules = _compile(scenario)
    first = _evaluate(rules, scenario)
    again = _evaluate(rules, scenario)
    rebuilt = _evaluate(_compile(scenario), scenario)
    assert plan_json(first, rules) == plan_json(again, rules) == plan_json(rebuilt, rules)
    assert first.skipped == again.skipped == rebuilt.skipped
    assert first.session_bounce == again.session_bounce == rebuilt.session_bounce


@PROPERTY
@given(scenarios())
@example(STOP_RULE_THEN_NEXT_RULE)
def test_nothing_runs_after_a_stop(scenario: Scenario) -> None:
    rules = _compile(scenario)
    plan = _evaluate(rules, scenario)
    for position, run in enumerate(plan.rules):
        if run.stop in ENDING:
            assert position == len(plan.rules) - 1, f"rule {run.name} ended evaluation"
        steps = run.actions
        # Only the last step of a rule can be the one that stopped it.
        assert not any(_stops(step) for step in steps[:-1])
        if run.stop is None:
            assert not any(_stops(step) for step in steps)
            assert len(steps) == len(rules.rules[run.index].actions)
            continue
        assert steps, f"rule {run.name} stopped without a step"
        last = steps[-1]
        if run.stop == "Stop":
            assert isinstance(last.action, StopAction)
        else:
            assert isinstance(last.action, LambdaAction)
            assert last.action.invocation_type == "request_response"
            assert last.disposition == run.stop
            assert scenario.results.get(last.action.function_name) == run.stop


@PROPERTY
@given(scenarios())
def test_rule_and_action_order_is_kept(scenario: Scenario) -> None:
    rules = _compile(scenario)
    plan = _evaluate(rules, scenario)
    indexes = [run.index for run in plan.rules]
    assert indexes == sorted(set(indexes))
    for run in plan.rules:
        configured = rules.rules[run.index]
        assert run.name == configured.name == scenario.rules[run.index].name
        assert configured.enabled
        assert [step.index for step in run.actions] == list(range(len(run.actions)))
        for step in run.actions:
            assert step.action == configured.actions[step.index]
            assert step.receipt == configured.actions[step.index].receipt_action(MESSAGE_ID)


@PROPERTY
@given(scenarios())
def test_accepted_recipients_match_an_enabled_rule(scenario: Scenario) -> None:
    rules = _compile(scenario)
    plan = _evaluate(rules, scenario)
    for decision in plan.recipients:
        if decision.accepted:
            assert _oracle(scenario, decision.address, scenario.domains), decision.address
    # Every RCPT answer agrees with the oracle, and a repeated accepted RCPT counts once.
    seen: set[str] = set()
    expected: list[tuple[str, int, str]] = []
    for address in scenario.rcpts:
        code, status = _expected_reply(scenario, address)
        if code == 250 and address.lower() in seen:
            continue
        seen.add(address.lower())
        expected.append((address, code, status))
    assert [(r.address, r.reply.code, r.reply.status) for r in plan.recipients] == expected


@PROPERTY
@given(scenarios(), st.lists(ADDRESSES, min_size=1, max_size=6))
def test_oracle_agrees_with_the_index(scenario: Scenario, addresses: list[str]) -> None:
    rules = _compile(scenario)
    for address in (*scenario.rcpts, *addresses):
        found = rules.index.rules_for(address)
        if _ours(_parts(address)[1], scenario.domains):
            assert found == _oracle(scenario, address, scenario.domains), address
        else:
            # rules_for leaves foreign domains to its caller: catch-all rules match anything.
            assert found == _oracle(scenario, address, None), address


@PROPERTY
@given(scenarios())
def test_rules_get_only_accepted_recipients(scenario: Scenario) -> None:
    plan = _evaluate(_compile(scenario), scenario)
    accepted = {r.address.lower() for r in plan.recipients if r.accepted}
    rejected = {r.address.lower() for r in plan.recipients if not r.accepted}
    assert not accepted & rejected
    for run in plan.rules:
        assert run.recipients, f"rule {run.name} ran for nobody"
        got = {a.lower() for a in run.recipients}
        assert not got & rejected
        assert got <= accepted
        assert len(got) == len(run.recipients), "a recipient is listed twice"


@PROPERTY
@given(scenarios())
@example(BOUNCE_AFTER_HEADER)
@example(BOUNCE_AFTER_DELIVERY)
def test_in_session_bounce(scenario: Scenario) -> None:
    plan = _evaluate(_compile(scenario), scenario)
    steps = _steps(plan)
    bounces = [k for k, (_, step) in enumerate(steps) if isinstance(step.action, BounceAction)]
    deliveries = [k for k, (_, step) in enumerate(steps) if _delivers(step)]
    in_session = bool(bounces) and (not deliveries or bounces[0] < deliveries[0])
    assert (plan.session_bounce is not None) is in_session
    if in_session:
        name, step = steps[bounces[0]]
        assert isinstance(step.action, BounceAction)
        assert plan.session_bounce == (name, step.index)
        assert plan.data_reply is not None
        assert plan.data_reply.code == int(step.action.smtp_reply_code)
        assert plan.data_reply.status == step.action.status_code
        assert plan.outcome == "rejected"
    elif plan.accepted_recipients:
        assert plan.data_reply is not None
        assert plan.data_reply.code == 250
        assert plan.outcome == "accepted"
    else:
        assert plan.data_reply is None
        assert plan.outcome == "rejected"


@PROPERTY
@given(scenarios())
@example(STOP_RULE_THEN_NEXT_RULE)
@example(BOUNCE_AFTER_HEADER)
def test_plan_equals_a_reference_walk(scenario: Scenario) -> None:
    """SPEC section 2, Rules, as a straight loop: every matching rule runs, in order, until a
    stop, a STOP_RULE_SET; STOP_RULE skips only the rest of its rule."""
    plan = _evaluate(_compile(scenario), scenario)
    accepted = plan.accepted_recipients
    expected: list[tuple[str, tuple[str, ...], list[int], str | None]] = []
    for rule in scenario.rules:
        matched = tuple(a for a in accepted if rule.enabled and _rule_matches(rule, a, None))
        if not matched or (rule.tls_policy == "require" and not scenario.tls):
            continue
        indexes: list[int] = []
        stop: str | None = None
        for index, action in enumerate(rule.actions):
            indexes.append(index)
            if action["type"] == "stop":
                stop = "Stop"
                break
            if action["type"] == "lambda" and action["invocation_type"] == "request_response":
                result = scenario.results.get(action["function_arn"].rsplit(":", 1)[1])
                if result in STOPPING:
                    stop = result
                    break
        expected.append((rule.name, matched, indexes, stop))
        if stop in ENDING:
            break
    got = [(r.name, r.recipients, [s.index for s in r.actions], r.stop) for r in plan.rules]
    assert got == expected
