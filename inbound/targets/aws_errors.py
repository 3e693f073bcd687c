"""Which AWS failures are worth retrying: one table from botocore error codes to transient or
permanent, used as `raise classify(exc) from exc` by the AWS target set.

The table only decides retryability; it never retries (botocore runs with one attempt and the
spool owns the retry schedule). Messages name the code and the service, never credentials.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from botocore.exceptions import BotoCoreError, ClientError

from inbound.core.errors import ActionError, PermanentActionError, TransientActionError

# (pattern, transient?) — first match wins, so the throttling rows come before the KMS rows
# (SNS answers "KMSThrottling", which is transient, beside "KMSDisabled", which is not).
# A ClientError is matched by its error code; any other botocore exception by its class name
# (and those of its bases), so connection errors sit in the same table as service codes.
ERROR_TABLE: tuple[tuple[str, bool], ...] = (
    # Throttling and overload: S3 SlowDown, SNS Throttled, Lambda TooManyRequestsException.
    ("Throttl*", True),
    ("*Throttl*", True),
    ("RequestLimitExceeded", True),
    ("TooManyRequestsException", True),
    ("SlowDown", True),
    ("ServiceUnavailable*", True),
    ("InternalError", True),
    ("InternalFailure", True),
    ("ServiceException", True),  # Lambda: "The AWS Lambda service encountered an internal error"
    ("ResourceNotReadyException", True),  # Lambda function still being created
    ("ResourceConflictException", True),  # Lambda function being updated
    ("RequestTimeout*", True),
    # Credentials expire and are refreshed (the provider chain, our assumed-role cache).
    ("ExpiredToken*", True),
    ("RequestExpired", True),
    # Network: nothing listening, a slow endpoint, a connection cut mid-response.
    ("EndpointConnectionError", True),
    ("ConnectTimeoutError", True),
    ("ReadTimeoutError", True),
    ("ConnectionClosedError", True),
    ("ConnectionError", True),
    # The instance metadata service or SSO may be briefly unreachable.
    ("NoCredentialsError", True),
    ("CredentialRetrievalError", True),
    # SES sending: a daily quota or sending rate is a wait (LimitExceeded); a refused
    # message ("Email address is not verified"), an unverified MAIL FROM domain, a paused or
    # suspended account are not.
    ("LimitExceededException", True),
    ("MessageRejected", False),
    ("MailFromDomainNotVerified*", False),
    ("SendingPaused*", False),
    ("AccountSuspended*", False),
    ("BadRequestException", False),
    # Permanent: the target is gone, forbidden or the request can never be valid.
    ("AccessDenied*", False),
    ("AuthorizationError", False),
    ("InvalidAccessKeyId", False),
    ("SignatureDoesNotMatch", False),
    ("UnrecognizedClientException", False),
    ("InvalidClientTokenId", False),
    ("NoSuchBucket", False),
    ("NoSuchEntity", False),
    ("InvalidBucketName", False),
    ("ResourceNotFoundException", False),
    ("NotFound", False),
    ("NotFoundException", False),
    ("InvalidParameter*", False),
    ("InvalidRequest*", False),
    ("RequestTooLargeException", False),
    ("EntityTooLarge", False),
    ("ValidationError", False),
    ("ValidationException", False),
    ("MalformedPolicyDocument", False),
    ("RegionDisabledException", False),
    # KMS keys disabled, deleted or not usable: S3 says "KMS.DisabledException", SNS "KMSDisabled",
    # Lambda "KMSDisabledException", KMS itself "DisabledException".
    ("KMS*Disabled*", False),
    ("KMS*NotFound*", False),
    ("KMS*InvalidState*", False),
    ("KMS*AccessDenied*", False),
    ("DisabledException", False),
    ("KMSInvalidStateException", False),
    # Our own request is malformed or the client cannot be configured: retrying cannot help.
    ("ParamValidationError", False),
    ("NoRegionError", False),
    ("UnknownServiceError", False),
    ("PartialCredentialsError", False),
)


def _lookup(code: str) -> bool | None:
    for pattern, transient in ERROR_TABLE:
        if fnmatchcase(code, pattern):
            return transient
    return None


def _client_error(exc: ClientError) -> ActionError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "") or "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    operation = exc.operation_name
    text = f"{operation}: {code or 'HTTP ' + str(status)}: {error.get('Message', '')}".rstrip(": ")
    transient = _lookup(code) if code else None
    if transient is None and (status >= 500 or status == 429):
        transient = True
    if transient is None:
        # Unknown code: retry. The spool gives up after the retry period (SES: 4 h, then
        # PublishExpired), so a permanent error taken for transient only delays the dead
        # letter, while a transient one taken for permanent would lose the message's action.
        transient = True
    return TransientActionError(text) if transient else PermanentActionError(text)


def classify(exc: BaseException) -> ActionError:
    """The action error for a boto3/botocore failure (see ERROR_TABLE)."""
    if isinstance(exc, ActionError):
        return exc
    if isinstance(exc, ClientError):
        return _client_error(exc)
    # boto3's S3 transfer manager wraps the ClientError of a failed multipart upload.
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ClientError) and not isinstance(exc, BotoCoreError):
        return _client_error(cause)
    for klass in type(exc).__mro__:
        transient = _lookup(klass.__name__)
        if transient is not None:
            text = f"{type(exc).__name__}: {exc}"
            return TransientActionError(text) if transient else PermanentActionError(text)
    # Unknown exception: transient, for the same reason as an unknown error code above.
    return TransientActionError(f"{type(exc).__name__}: {exc}")


# S3's answers to a conditional PutObject that lost: the object changed since it was read, or
# exists already (412), or another conditional write to the key is under way (409).
_LOST_RACE = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def lost_conditional_write(exc: ClientError) -> bool:
    """An `If-Match` / `If-None-Match` PutObject that found the object not as expected."""
    return exc.response.get("Error", {}).get("Code") in _LOST_RACE
