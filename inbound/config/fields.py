"""Constrained field types for config models: names, ARNs, CIDRs, codes, header fields.

Each type validates one thing and says what is wrong in words a user can act on; the models
in `inbound.rules` and `inbound.actions` compose them. Limits cite the SES API model.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, StringConstraints

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?")
_DOMAIN_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,50}")
_REPLY_CODE = re.compile(r"[45][0-9][0-9]")
_STATUS_CODE = re.compile(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}")
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")
_SIZE = re.compile(r"(\d+)\s*(?:([kmg])i?)?b?", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _check_name(value: str) -> str:
    # SES: only [A-Za-z0-9_.-], start and end alphanumeric, at most 64 characters.
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '_', '.', '-', "
            "start and end with a letter or digit, at most 64 characters"
        )
    return value


def check_domain(value: str) -> str:
    domain = value.lower().rstrip(".")
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_DOMAIN_LABEL.fullmatch(x) for x in labels):
        raise ValueError(f"{value!r} is not a valid domain name")
    return domain


def _check_cidr(value: str) -> IPv4Network | IPv6Network:
    try:
        # SES accepts host bits in a range (10.0.0.1/24), so strict=False.
        return ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IP address or CIDR range") from None


def network_meant(cidr: str) -> str | None:
    """The network a CIDR with host bits set stands for (`10.0.0.1/8` -> `10.0.0.0/8`), or
    None when it has none: such a range is valid (SES reads it so) but rarely what was meant."""
    try:
        ip_network(cidr)
    except ValueError:
        return str(ip_network(cidr, strict=False))  # valid: the model read it already
    return None


def _check_reply_code(value: str) -> str:
    if not _REPLY_CODE.fullmatch(value):
        raise ValueError(f"{value!r} is not a 4xx or 5xx SMTP reply code (RFC 5321 §4.2)")
    return value


def _check_status_code(value: str) -> str:
    if not _STATUS_CODE.fullmatch(value):
        raise ValueError(f"{value!r} is not an enhanced status code like 5.1.1 (RFC 3463)")
    return value


def _check_header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a header name: 1-50 of letters, digits and '-'")
    return value


def _check_header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("a header value cannot contain CR or LF")
    if len(value) >= 2048:
        raise ValueError(f"a header value must be shorter than 2048 characters ({len(value)})")
    return value


def _check_address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"{value!r} is not an email address")
    return value


def _number_as_text(value: object) -> object:
    # `smtp_reply_code: 550` is natural YAML; the SES API field is a string.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def arn(service: str, resource: str) -> AfterValidator:
    pattern = re.compile(rf"arn:aws[a-z-]*:{service}:[a-z0-9-]*:[0-9]{{12}}:{resource}", re.ASCII)

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {service} ARN")
        return value

    return AfterValidator(check)


Name = Annotated[str, AfterValidator(_check_name)]
Domain = Annotated[str, AfterValidator(check_domain)]
Cidr = Annotated[str, AfterValidator(_check_cidr)]
ReplyCode = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_check_reply_code)]
StatusCode = Annotated[str, AfterValidator(_check_status_code)]
HeaderName = Annotated[str, AfterValidator(_check_header_name)]
HeaderValue = Annotated[str, AfterValidator(_check_header_value)]
Address = Annotated[str, AfterValidator(_check_address)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]

TopicArn = Annotated[str, arn("sns", r"[A-Za-z0-9_-]{1,256}(\.fifo)?")]
FunctionArn = Annotated[
    str, arn("lambda", r"function:[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9_$-]{1,128})?")
]
KmsKeyArn = Annotated[str, arn("kms", r"(key|alias)/[A-Za-z0-9/_+=,.@:-]{1,256}")]
IamRoleArn = Annotated[str, arn("iam", r"role/([!-~]+/)?[A-Za-z0-9+=,.@_-]{1,64}")]
WorkmailArn = Annotated[str, arn("workmail", r"organization/[a-z0-9-]{1,64}")]
ConnectArn = Annotated[str, arn("connect", r"instance/[0-9a-f-]{36}")]


def function_name(function_arn: str) -> str:
    """The function name of a Lambda ARN: the NAME of `--lambda NAME=...` and test files."""
    return function_arn.split(":")[6]


def topic_name(topic_arn: str) -> str:
    return topic_arn.split(":")[5]


def size_in_bytes(text: str) -> int | None:
    """`40MB`, `512k`, `1 MiB`, `1000` as bytes (units of 1024, as Postfix and the SMTP `SIZE`
    flags count them), or None when `text` is no size: the one reading of sizes, for flags and
    rule fields alike."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        return None
    unit: int = 1024 ** "_kmg".index((match.group(2) or "_").lower())
    return int(match.group(1)) * unit


def _size(value: object) -> object:
    if not isinstance(value, str):
        return value  # a number: the model's int checks it
    size = size_in_bytes(value)
    if size is None:
        raise ValueError(f"{value!r} is not a size like 1048576, 512KB or 1MB")
    return size


# A byte count written as a number or a size (`1MB`, `512KB`).
ByteSize = Annotated[int, BeforeValidator(_size)]


def duration_in_seconds(text: str) -> float | None:
    """`500ms`, `30s`, `10m`, `4h`, `7d`, `30` (seconds) as seconds, or None when `text` is no
    duration: the one reading of durations, for flags and rule fields alike."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        return None
    return float(match.group(1)) * _SECONDS[match.group(2)]
