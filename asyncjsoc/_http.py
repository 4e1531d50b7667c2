"""The HTTP session asyncjsoc uses, and the one place aiohttp errors become ours.

:func:`create_session` builds the :class:`aiohttp.ClientSession` objects a client owns (one
for file downloads, one for JSOC API calls, sharing one rate limiter): few connections, no
overall timeout (big files take as long as they take; callers bound waits with
``anyio.fail_after``), verified TLS, and the rate-limit middleware on every request.
:func:`map_transport_errors` and :func:`raise_for_status` translate what aiohttp and the OS
raise into :mod:`asyncjsoc.exceptions`.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientMiddlewareType
from yarl import URL

from ._ratelimit import TokenBucket, parse_retry_after, rate_limit_middleware
from .exceptions import HttpStatusError, IpBlockedError, ProtocolError, TransportError

__all__ = [
    "NETWORK_HINT",
    "RETRYABLE_STATUSES",
    "TransportConfig",
    "could_not_connect",
    "create_session",
    "default_user_agent",
    "is_retryable",
    "map_transport_errors",
    "raise_for_status",
    "same_host_redirects",
]

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
"""HTTP statuses worth another try: timeouts, "slow down" and server-side trouble."""

_TLS_HINT = (
    "The server's TLS certificate could not be verified. If your site uses its own CA "
    "(e.g. a TLS-inspecting proxy), pass its certificate file as ca_bundle."
)

NETWORK_HINT = ("check the server URL and that it is reachable from here; the same call may "
                "work later (what finished is kept)")
"""The hint of a network failure (refused, reset, timed out) once its retries are spent."""


def _own_version() -> str:
    """asyncjsoc's installed version (read from metadata: importing the package would cycle)."""
    try:
        return importlib.metadata.version("asyncjsoc")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def default_user_agent() -> str:
    """``asyncjsoc/<ver> aiohttp/<ver> python/<ver>``: lets JSOC staff see who is calling."""
    return (
        f"asyncjsoc/{_own_version()} aiohttp/{aiohttp.__version__} "
        f"python/{platform.python_version()}"
    )


@dataclass(frozen=True, kw_only=True)
class TransportConfig:
    """How asyncjsoc talks HTTP to the JSOC.

    Parameters
    ----------
    connections
        Open connections per host (default 2). JSOC staff have asked download tools to use very
        few parallel connections: sunpy limits JSOC downloads to one (sunpy PR #5714, after a
        private request from the JSOC), and the JSOC has blocked IP addresses of heavy users
        (sunpy #4291). Two overlaps one file's latency with another's transfer; raise it
        only with good reason. (:class:`~asyncjsoc.Client` gives the JSOC API calls a
        session of their own with one connection, so they never wait behind downloads.)
    requests_per_second
        Sustained rate of HTTP requests (CGI calls and file GETs, retries included) from this
        client. The JSOC publishes no request budget (protocol notes §13), so the default of 5
        is a conservative guess, not a known limit. ``0`` or ``inf`` turns the limit off.
    burst
        Requests allowed at once before the rate applies (default 10).
    sock_connect
        Seconds allowed to open a connection.
    sock_read
        Seconds allowed between two reads of a reply; a stalled download fails after this.
        There is deliberately no total timeout: bound whole operations with ``anyio.fail_after``.
    ca_bundle
        Path to a PEM file of CA certificates to trust instead of the system's, for sites with
        their own CA. TLS certificates are always verified; there is no option to turn that off.
    user_agent
        The ``User-Agent`` header.
    trust_env
        Use proxy settings from the environment (``HTTP_PROXY`` …) and ``~/.netrc``.
    """

    connections: int = 2
    requests_per_second: float = 5.0
    burst: int = 10
    sock_connect: float = 30.0
    sock_read: float = 120.0
    ca_bundle: str | Path | None = None
    user_agent: str = field(default_factory=default_user_agent)
    trust_env: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.connections, bool) or not isinstance(self.connections, int):
            raise TypeError("connections must be an int")
        if self.connections < 1:
            raise ValueError(f"connections must be >= 1, got {self.connections}")
        if math.isnan(self.requests_per_second) or self.requests_per_second < 0:
            raise ValueError(
                f"requests_per_second must be >= 0 (0 or inf: unlimited), "
                f"got {self.requests_per_second!r}"
            )
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst must be an int >= 1, got {self.burst!r}")
        for name in ("sock_connect", "sock_read"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not self.user_agent or "\n" in self.user_agent or "\r" in self.user_agent:
            raise ValueError("user_agent must be a non-empty single line")

    def make_bucket(self) -> TokenBucket:
        """A fresh :class:`TokenBucket` with this config's rate and burst.

        Returns
        -------
        TokenBucket
            Share it between everything that talks to the same server.
        """
        return TokenBucket(self.requests_per_second, self.burst)


def _ssl_context(ca_bundle: str | Path | None) -> ssl.SSLContext | bool:
    """What the connector verifies TLS with: the system CAs, or ``ca_bundle`` if given.

    ``True`` is aiohttp's own verifying context, built once when aiohttp is imported: a new
    default context per session would read the system certificates again, blocking the
    event loop for tens of milliseconds.
    """
    if ca_bundle is None:
        return True
    path = Path(ca_bundle)
    if not path.is_file():
        raise ValueError(f"ca_bundle {str(path)!r} is not a file")
    return ssl.create_default_context(cafile=str(path))


def create_session(
    config: TransportConfig, bucket: TokenBucket | None = None
) -> aiohttp.ClientSession:
    """Build an HTTP session of the client (downloads and API calls each have one).

    Must be called with an event loop running; close the session (``async with``) when done.

    Parameters
    ----------
    config
        Transport settings.
    bucket
        The shared rate limiter; ``None`` makes one from ``config``.

    Returns
    -------
    aiohttp.ClientSession
        With ``limit_per_host=config.connections``, no total timeout, verified TLS, the
        ``User-Agent`` set, ``raise_for_status`` off, every request charged to ``bucket``,
        and redirects followed only on the same server (:func:`same_host_redirects`).
    """
    if bucket is None:
        bucket = config.make_bucket()
    connector = aiohttp.TCPConnector(
        limit_per_host=config.connections,
        ssl=_ssl_context(config.ca_bundle),
    )
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=config.sock_connect, sock_read=config.sock_read
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": config.user_agent},
        raise_for_status=False,
        middlewares=(rate_limit_middleware(bucket), same_host_redirects()),
        trust_env=config.trust_env,
    )


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _same_server(origin: URL, target: URL) -> bool:
    """Whether a redirect from ``origin`` to ``target`` stays on the same server.

    Same scheme, host and port; or an upgrade from ``http`` to ``https`` on the same host
    (default ports). A downgrade from ``https`` to ``http`` is never the same server.
    """
    if (origin.host or "").lower() != (target.host or "").lower():
        return False
    if origin.scheme == target.scheme:
        return origin.port == target.port
    return (
        origin.scheme == "http"
        and target.scheme == "https"
        and origin.port == _DEFAULT_PORTS["http"]
        and target.port == _DEFAULT_PORTS["https"]
    )


def same_host_redirects() -> ClientMiddlewareType:
    """An aiohttp client middleware that refuses redirects to another server.

    aiohttp follows redirects and runs the middlewares again for every hop, so this sees each
    ``3xx`` reply before it is followed. A ``Location`` on the same scheme, host and port (or
    an ``http`` → ``https`` upgrade of the same host) is followed as usual; anything else
    raises :class:`~asyncjsoc.exceptions.ProtocolError` without contacting the other host.

    Why: every URL asyncjsoc fetches is built from the server the user chose. A redirect to
    another host would make it write files from a server nobody chose into the output
    directory, would send the request (CGI query strings carry the notify address) to a third
    party, and a downgrade to ``http`` would drop TLS. The JSOC itself has no reason to send
    clients elsewhere, so such a redirect is an error worth reporting, never followed silently.

    Returns
    -------
    ClientMiddlewareType
        Pass it in ``ClientSession(middlewares=[...])``.
    """

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        response = await handler(request)
        location = response.headers.get("Location") if response.status in _REDIRECTS else None
        if location:
            try:
                target = request.url.join(URL(location))
            except ValueError:
                target = None
            if target is None or not _same_server(request.url, target):
                response.release()
                shown = location if len(location) <= 200 else location[:197] + "..."
                raise ProtocolError(
                    f"refusing to follow a redirect from {request.url.origin()} to another "
                    f"server: HTTP {response.status} to {shown!r}"
                )
        return response

    return middleware


@contextmanager
def map_transport_errors(url: str | None = None) -> Iterator[None]:
    """Turn aiohttp, timeout and OS errors raised inside the block into asyncjsoc errors.

    Cancellation and asyncjsoc's own errors pass through untouched.

    Parameters
    ----------
    url
        The URL being fetched, attached to the error.

    Raises
    ------
    HttpStatusError
        For :class:`aiohttp.ClientResponseError` (with the status and ``Retry-After``).
    ProtocolError
        For an invalid URL or a malformed HTTP reply.
    TransportError
        For everything else that went wrong on the network, timeouts included.
    """
    where = f" ({url})" if url else ""
    try:
        yield
    except aiohttp.ClientResponseError as exc:
        retry_after = parse_retry_after(exc.headers.get("Retry-After")) if exc.headers else None
        raise HttpStatusError(
            f"HTTP {exc.status} {exc.message}{where}",
            status=exc.status,
            url=url,
            retry_after=retry_after,
        ) from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        raise TransportError(
            f"TLS certificate verification failed{where}: {exc.certificate_error}",
            url=url,
            hint=_TLS_HINT,
        ) from exc
    except aiohttp.InvalidURL as exc:
        raise ProtocolError(f"invalid URL{where}: {exc}") from exc
    except (aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError) as exc:
        raise TransportError(f"timed out{where}: {exc}", url=url, hint=NETWORK_HINT) from exc
    except aiohttp.ClientPayloadError as exc:
        raise TransportError(f"reply body broken off{where}: {exc}", url=url,
                             hint=NETWORK_HINT) from exc
    except aiohttp.ClientError as exc:
        raise TransportError(f"{type(exc).__name__}{where}: {exc}", url=url,
                             hint=NETWORK_HINT) from exc
    except TimeoutError as exc:
        raise TransportError(f"timed out{where}", url=url, hint=NETWORK_HINT) from exc
    except ssl.SSLError as exc:
        raise TransportError(f"TLS error{where}: {exc}", url=url, hint=_TLS_HINT) from exc
    except OSError as exc:
        raise TransportError(f"network error{where}: {exc}", url=url, hint=NETWORK_HINT) from exc


def raise_for_status(response: aiohttp.ClientResponse, *, url: str | None = None) -> None:
    """Raise unless ``response`` is a 2xx reply.

    A 403 carrying ``Retry-After`` is taken as an IP block (the rate-limit middleware has
    already paused the bucket for that long).

    Parameters
    ----------
    response
        A reply whose body has not necessarily been read.
    url
        How to name the request in the error (default: the full URL; pass something shorter
        when the query string holds an email address).

    Raises
    ------
    IpBlockedError
        403 with ``Retry-After``.
    HttpStatusError
        Any other status outside 200-299, with ``retry_after`` when the server sent one.
    """
    status = response.status
    if 200 <= status < 300:
        return
    url = str(response.url) if url is None else url
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 403 and retry_after is not None:
        raise IpBlockedError(
            f"the server is refusing this IP address for {retry_after:g} s (HTTP 403)",
            retry_after=retry_after,
            url=url,
            status=403,
            hint=(
                "The JSOC blocks addresses that send too many requests. Wait, then lower "
                "requests_per_second / connections; every request is already held back "
                "until the block ends."
            ),
        )
    reason = response.reason or ""
    raise HttpStatusError(
        f"HTTP {status} {reason} ({url})".replace("  ", " "),
        status=status,
        url=url,
        retry_after=retry_after,
    )


def could_not_connect(exc: Exception) -> bool:
    """Whether ``exc`` says no connection to the server was made (refused, no route, a name
    that does not resolve, a connect timeout): the request never reached the server.

    Parameters
    ----------
    exc
        The error from an attempt.

    Returns
    -------
    bool
        True for connection failures, False for everything that happened after connecting.
    """
    if not isinstance(exc, TransportError) or isinstance(exc, HttpStatusError):
        return False
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorCertificateError | ssl.SSLError):
        return False
    return isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


def is_retryable(exc: Exception) -> bool:
    """Whether another attempt could succeed: transport trouble and 408/425/429/5xx replies.

    Certificate failures and other HTTP statuses (404, 403 …) are not retryable.

    Parameters
    ----------
    exc
        The error from an attempt.

    Returns
    -------
    bool
        True when retrying makes sense.
    """
    if isinstance(exc, HttpStatusError):
        return exc.status in RETRYABLE_STATUSES
    if isinstance(exc, TransportError):
        return not isinstance(
            exc.__cause__, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError
        )
    return False
