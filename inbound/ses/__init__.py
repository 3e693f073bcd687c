"""Inbound against real Amazon SES: the YAML rule set as an SES receipt rule set and back, and
the Lambda handler that runs the YAML's rules on mail SES received.

`export` is pure (YAML model -> the SES JSON `create-receipt-rule` takes, and what SES cannot
express); `live` talks to the SES v1 receipt API (import, plan, apply) through boto3;
`handler` is the Lambda function (`inbound.ses.lambda_handler`, SPEC section 8); `guard` the
guard Lambda that decides the YAML's extensions for SES (`inbound.ses.guard_handler`).
"""

from __future__ import annotations


def lambda_handler(event: object, context: object) -> dict[str, str]:
    """The SES Lambda handler (`inbound.ses.handler.lambda_handler`), under the SPEC's name.

    Imported on first call, so `inbound ses export` and friends do not load boto3 for it."""
    from inbound.ses.handler import lambda_handler as handle  # noqa: PLC0415 - see docstring

    return handle(event, context)


def guard_handler(event: object, context: object) -> dict[str, str]:
    """The guard Lambda (`inbound.ses.guard.guard_handler`), under the name export documents.

    Imported on first call, like `lambda_handler`; it never loads the AWS targets."""
    from inbound.ses.guard import guard_handler as guard  # noqa: PLC0415 - see docstring

    return guard(event, context)
