"""Retrying transient object-store errors: a bounded exponential backoff around one call.

A throttled or briefly unreachable store (HTTP 503 SlowDown, 500, a refused or reset
connection, a timeout) is worth waiting for; a missing object, a denied request or corrupt bytes
are not. ``call_with_retry`` retries the first kind with the delays of a ``RetryPolicy``, says
each retry on one line, and when the retries are spent raises ``StorageUnavailable``, which is
not a DataError: Ray Train restarts the worker group on it (a DataError stops the run at once).

The layers below retry too, briefly, on the same request: botocore (legacy mode, its default:
5 attempts over 5xx, throttling and connection errors, a random backoff of up to 1, 2, 4, 8 s)
and s3fs (5 tries of errors whose text says ``SlowDown`` and of botocore's HTTPClientError family,
0.1·1.7^i s apart). What reaches this module is what survived those.

How s3fs 2026.9 reports them (walked through ``__cause__`` / ``__context__``):

- HTTP 503 (SlowDown, or no body on a HEAD): ``OSError(EBUSY=16, "Please reduce your request
  rate." | "Service Unavailable")`` from a ``botocore.exceptions.ClientError``;
- HTTP 500: ``OSError(EREMOTEIO=121, "Internal Server Error" | "We encountered an internal error.")``;
- a refused connection: ``botocore.exceptions.EndpointConnectionError`` from aiohttp's
  ``ClientConnectorError`` (errno ECONNREFUSED) from ``ConnectionRefusedError``;
- a missing key: ``FileNotFoundError``; a denied one: ``PermissionError``.

Imports: the standard library and ``mvae_dist.errors``; botocore and aiohttp only when present.
"""

from __future__ import annotations

import errno
import functools
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from mvae_dist.errors import MvaeDistError, StorageUnavailable, one_line

if TYPE_CHECKING:
    from mvae_dist.config import DataConfig, TrainSection

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying: ``retries`` after the first try, the i-th after base_s·2^i seconds
    (at most cap_s), and never more than ``max_wait_s`` seconds slept in all."""

    retries: int = 5
    max_wait_s: float = 60.0
    base_s: float = 0.5
    cap_s: float = 8.0


def read_policy(data: DataConfig) -> RetryPolicy:
    """The policy of shard and manifest reads: ``data.read_retries``, ``data.read_retry_s``."""
    return RetryPolicy(retries=data.read_retries, max_wait_s=data.read_retry_s)


def storage_policy(train: TrainSection) -> RetryPolicy:
    """The policy of checkpoint storage: ``train.storage_retries``, ``train.storage_retry_s``."""
    return RetryPolicy(retries=train.storage_retries, max_wait_s=train.storage_retry_s)


def backoff_delays(policy: RetryPolicy) -> list[float]:
    """Seconds to wait before each retry: d_i = min(base_s·2^i, cap_s) for i < retries, cut before
    the first delay that would take the sum over max_wait_s (so sum(d) <= max_wait_s)."""
    delays: list[float] = []
    total = 0.0
    for i in range(max(0, policy.retries)):
        d = min(policy.base_s * 2.0**i, policy.cap_s)
        if total + d > policy.max_wait_s:
            break
        delays.append(d)
        total += d
    return delays


# ---- what is transient ------------------------------------------------------------------------

#: errno values of a busy, throttled or dropped connection (s3fs maps 503/SlowDown to EBUSY and
#: 500/InternalError to EREMOTEIO)
TRANSIENT_ERRNOS = frozenset({
    errno.EBUSY, errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
    errno.EPIPE, errno.EAGAIN, errno.ENETUNREACH, errno.EHOSTUNREACH,
    *([errno.EREMOTEIO] if hasattr(errno, "EREMOTEIO") else []),
})
#: HTTP statuses worth another try: too many requests, and the server-side 5xx S3 tells to retry
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
#: S3 / AWS error codes of throttling and server trouble (botocore's retry definitions)
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "InternalError",
    "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
})
#: the same in text, for errors that kept only a message (s3fs's translations, Ray's wrappers)
_TRANSIENT_TEXT = re.compile(
    r"SlowDown|Throttl|RequestLimitExceeded|reduce your request rate|Service Unavailable"
    r"|Internal ?Error|Internal Server Error|Bad Gateway|Gateway Time-?out|\((?:500|502|503|504)\)"
)
#: never transient, whatever their errno or text says
_PERMANENT_BUILTINS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                       FileExistsError, MvaeDistError)


@functools.lru_cache(maxsize=1)
def _library_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(transient, permanent) exception classes of botocore and aiohttp, those installed."""
    transient: list[type] = []
    permanent: list[type] = []
    try:
        from botocore import exceptions as bx
    except ImportError:
        pass
    else:
        transient += [bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError,
                      bx.ReadTimeoutError, bx.ResponseStreamingError, bx.IncompleteReadError]
        permanent += [bx.SSLError, bx.NoCredentialsError]
    try:
        import aiohttp
    except ImportError:
        pass
    else:
        transient += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
        # certificate and fingerprint failures are connection errors that no retry fixes
        permanent += [aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch]
    return tuple(transient), tuple(permanent)


def _chain(exc: BaseException, limit: int = 32) -> Iterator[BaseException]:
    """``exc``, then its causes (``__cause__``, else ``__context__``), outermost first, each once."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < limit:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _response_verdict(exc: BaseException) -> bool | None:
    """For an error that carries an HTTP answer (botocore ClientError ``response``, aiohttp
    ``status``): True when it is throttling or a 5xx, False for another 4xx, else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str((response.get("Error") or {}).get("Code", ""))
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in TRANSIENT_CODES or status in TRANSIENT_STATUSES:
            return True
        if isinstance(status, int) and 400 <= status < 500:
            return False
        return None
    status = getattr(exc, "status", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status < 600:
        return status in TRANSIENT_STATUSES
    return None


def _verdict(exc: BaseException) -> bool | None:
    """True / False when this one exception decides, None to look at its cause."""
    transient_types, permanent_types = _library_types()
    if isinstance(exc, _PERMANENT_BUILTINS + permanent_types):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError) + transient_types):
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    by_response = _response_verdict(exc)
    if by_response is not None:
        return by_response
    if _TRANSIENT_TEXT.search(str(exc)):
        return True
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether another try may succeed: throttling (SlowDown, Throttling, RequestLimitExceeded),
    HTTP 429/500/502/503/504, timeouts, refused / reset / closed connections, judged on ``exc``
    and then its causes (the first that decides). Never a missing, denied or wrong-kind path, a
    TLS certificate failure, or one of this project's errors (DataError: real corruption;
    StorageUnavailable: already retried)."""
    if not isinstance(exc, Exception):
        return False  # KeyboardInterrupt, SystemExit, ...
    for link in _chain(exc):
        verdict = _verdict(link)
        if verdict is not None:
            return verdict
    return False


# ---- retrying -----------------------------------------------------------------------------------


def _say_stderr(line: str) -> None:
    # not print(): in a Ray Train worker print is patched into a logger that reaches the driver
    # twice; a write to the stream reaches it once
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _seconds(x: float) -> str:
    """Seconds for a message: one decimal from 0.1 s up (1.0, 15.5), two significant digits below
    (0.01, 0.05), so that a short test policy's delays stay readable."""
    return f"{x:.1f}" if x >= 0.1 or x == 0 else f"{x:.2g}"


def describe(exc: BaseException) -> str:
    """``TypeName: first line of the message`` (one line for a log or an error)."""
    return f"{type(exc).__name__}: {one_line(exc)}"


def call_with_retry(
    fn: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    *,
    say: Callable[[str], None] = _say_stderr,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, tried again after each transient error (``is_transient``) with the delays of
    ``backoff_delays(policy)``; a non-transient error propagates at once.

    Each retry is one line through ``say``: ``mvae-dist: retry 2/5 in 1.0 s: <what>: <error>``.
    When the retries are spent: StorageUnavailable ``<what> failed after 5 retries over 15.5 s:
    <error>`` (the seconds slept), raised from the last error.
    """
    delays = backoff_delays(policy)
    slept = 0.0
    for attempt in range(len(delays) + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == len(delays):
                raise StorageUnavailable(
                    f"{what} failed after {len(delays)} retries over {_seconds(slept)} s: {describe(exc)}"
                ) from exc
            delay = delays[attempt]
            say(f"mvae-dist: retry {attempt + 1}/{len(delays)} in {_seconds(delay)} s: {what}: "
                f"{describe(exc)}")
        sleep(delay)
        slept += delay
    raise AssertionError("unreachable")  # the loop returns or raises
