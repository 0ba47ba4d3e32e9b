"""Every error type a step, an activity or the workflow can report, in one enum.

The value is what Temporal carries as `ApplicationError.type` and what the mirror stores as
`error_type`; retry policies name their non-retryable types from here, so a renamed error can
never silently become retryable.
"""

from enum import StrEnum


class ErrorType(StrEnum):
    # the step itself
    STEP_FAILED = "StepFailed"
    STEP_TIMEOUT = "StepTimeout"
    INVALID_STEP = "InvalidStep"
    EXECUTOR_ERROR = "ExecutorError"
    CONFIGURATION_ERROR = "ConfigurationError"
    COMMAND_FAILED = "CommandFailed"
    COMMAND_START_ERROR = "CommandStartError"
    NOOP_FAILED = "NoopFailed"
    PRECONDITION_FAILED = "PreconditionFailed"
    SUCCESS_CRITERION_FAILED = "SuccessCriterionFailed"
    VALIDATION_FAILED = "ValidationFailed"
    ASSERTION_FAILED = "AssertionFailed"
    HTTP_STATUS = "HttpStatus"
    READ_ONLY_VIOLATION = "ReadOnlyViolation"
    UNSUPPORTED_CONNECTOR = "UnsupportedConnector"
    # connectors
    SSH_CONNECT_ERROR = "SshConnectError"
    SSH_CONNECTION_LOST = "SshConnectionLost"
    HOST_KEY_VERIFICATION_FAILED = "HostKeyVerificationFailed"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    PERMISSION_DENIED = "PermissionDenied"
    HTTP_CONNECT_ERROR = "HttpConnectError"
    HTTP_TRANSPORT_ERROR = "HttpTransportError"
    SQL_ERROR = "SqlError"
    FILE_TRANSFER_FAILED = "FileTransferFailed"
    SOURCE_NOT_FOUND = "SourceNotFound"
    AUTOMATION_SERVICE_ERROR = "AutomationServiceError"
    # safety
    RBAC_DENIED = "RbacDenied"
    LOCK_LOST = "LockLost"
    LOCK_TIMEOUT = "LockTimeout"
    UNKNOWN_OUTCOME = "UnknownOutcome"
    STEP_INTERRUPTED = "StepInterrupted"  # its worker shut down or the server timed it out
    UNKNOWN_ASSET = "UnknownAsset"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_BACKEND_ERROR = "SecretBackendError"
    CREDENTIAL_ERROR = "CredentialError"
    # bookkeeping
    DATABASE_UNAVAILABLE = "DatabaseUnavailable"
    ILLEGAL_TRANSITION = "IllegalTransition"
    MIRROR_WRITE_REFUSED = "MirrorWriteRefused"  # PostgreSQL refused the data: no retry helps
    CLEANUP_FAILED = "CleanupFailed"
    # how a run closes in Temporal (the failure's type names the ending)
    EXECUTION_FAILED = "ExecutionFailed"
    EXECUTION_TIMEOUT = "ExecutionTimeout"
    EXECUTION_REJECTED = "ExecutionRejected"
    # operator messages
    INVALID_PAYLOAD = "InvalidPayload"
    NO_APPROVAL_PENDING = "NoApprovalPending"
    ALREADY_ENDING = "AlreadyEnding"


def names(*types: ErrorType) -> list[str]:
    """The plain strings a `RetryPolicy(non_retryable_error_types=...)` wants."""
    return [t.value for t in types]
