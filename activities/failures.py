"""Activity failures that fit Temporal's limits, the error first.

A failure whose message or stack trace is too long is refused by the server, and `temporal
workflow describe` and the Web UI then show "Failure exceeds size limit." instead of the
error. The worker installs `TrimFailures`, which, for every failing activity, cuts the message
to `MESSAGE_CHARS` (keeping its start, where the error is said) and the stack trace to the
innermost `TRACE_FRAMES` frames (where it was raised), for the exception and its causes. An
exception that is not an `ApplicationError` becomes one carrying its original type name, so
what Temporal shows is "Type: message", not a wall of frames.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

MESSAGE_CHARS = 2000
TRACE_FRAMES = 8
CAUSE_DEPTH = 3


def _last_frames(tb: TracebackType | None, keep: int = TRACE_FRAMES) -> TracebackType | None:
    frames: list[TracebackType] = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    return frames[-keep] if len(frames) > keep else (frames[0] if frames else None)


def _short(message: str, limit: int = MESSAGE_CHARS) -> str:
    if len(message) <= limit:
        return message
    return message[:limit] + f" ...[{len(message) - limit} more characters]"


def trim_failure(err: BaseException, depth: int = 0) -> BaseException:
    """The exception to report instead of `err`: short message, short trace, short causes."""
    if isinstance(err, ApplicationError):
        out: BaseException = err
        if len(err.message) > MESSAGE_CHARS:
            out = ApplicationError(_short(err.message), *err.details, type=err.type,
                                   non_retryable=err.non_retryable,
                                   next_retry_delay=err.next_retry_delay)
    elif isinstance(err, Exception) and not isinstance(err, asyncio.CancelledError) \
            and not type(err).__module__.startswith("temporalio"):
        out = ApplicationError(_short(f"{type(err).__name__}: {err}"), type=type(err).__name__)
    else:
        return err
    out = out.with_traceback(_last_frames(err.__traceback__))
    cause = err.__cause__
    out.__cause__ = (trim_failure(cause, depth + 1)
                     if cause is not None and depth < CAUSE_DEPTH else None)
    out.__suppress_context__ = True
    return out


class _TrimActivityFailures(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except Exception as err:
            trimmed = trim_failure(err)
            if trimmed is err:
                raise
            raise trimmed from trimmed.__cause__


class TrimFailures(Interceptor):
    """Worker interceptor: every activity failure trimmed by `trim_failure`."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TrimActivityFailures(next)
