"""The aiohttp application: CGI routes, static SUMS/export files, faults, audit, and Emulator."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlsplit

from aiohttp import web

from asyncjsoc.emulator._audit import Audit, RequestEntry
from asyncjsoc.emulator._clock import Clock
from asyncjsoc.emulator._fetch import (
    exp_request,
    exp_status,
    index_html,
    index_json,
    index_txt,
    missing,
    offline,
)
from asyncjsoc.emulator._files import BodyCache, FitsValue, build_tar, make_fits
from asyncjsoc.emulator._hostile import broken_json, pick, rate_hit
from asyncjsoc.emulator._info import check_address, jsoc_info, show_series, showextseries
from asyncjsoc.emulator._knobs import Knobs
from asyncjsoc.emulator._state import Export, State

if TYPE_CHECKING:
    from asyncjsoc.emulator._catalog import Catalog, Record, Segment

__all__ = ["Emulator", "create_app", "run_emulator"]

CGI = "/cgi-bin/ajax/"
CHUNK = 1 << 20
_SUMS_RE = re.compile(r"^/SUM(\d+)/D(\d+)/S(\d+)/(.+)$")
_SERIES_MTIME = datetime(2020, 4, 10, tzinfo=UTC).timestamp()
_MAX_KEYWORDS = 40
_INT_TYPES = ("short", "int", "longlong", "char")


@dataclass(frozen=True)
class FileBody:
    """A servable file: its bytes plus validators."""

    body: memoryview
    etag: str
    mtime: float


class Emulator:
    """One emulated JSOC: rules, state, audit and the aiohttp app serving them.

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:PORT`` once running (empty before).
    knobs : Knobs
        Rules and faults; change fields at runtime to change behaviour.
    audit : Audit
        What clients did.
    catalog : Catalog
        The emulated series and records.
    clock : Clock
        The emulator clock (``advance(seconds)`` to move time forward).
    state : State
        Exports, emails and per-IP accounting.
    app : aiohttp.web.Application
        The application (``create_app`` returns it).
    """

    def __init__(self, knobs: Knobs | None = None, catalog: Catalog | None = None) -> None:
        from asyncjsoc.emulator._catalog import Catalog

        self.knobs = knobs if knobs is not None else Knobs()
        self.clock = Clock(self.knobs.time_scale)
        self.audit = Audit()
        self.catalog = catalog if catalog is not None else Catalog()
        self.state = State(self.knobs, self.clock, self.audit)
        self.cache = BodyCache(self.knobs.cache_bytes)
        self.url = ""
        self._generating: dict[str, asyncio.Future[memoryview]] = {}
        self._files_open = asyncio.Event()
        self._files_open.set()
        self._held_changed = asyncio.Condition()
        self.files_held = 0
        """File GETs waiting at the gate right now (see :meth:`hold_files`)."""
        self.files_sending = 0
        """File bodies being sent right now (see :meth:`wait_files_sent`)."""
        self.app = self._build_app()

    # -- public helpers for tests -----------------------------------------------------------------

    def hold_files(self) -> None:
        """Make file GETs wait before their response headers until :meth:`release_files`.

        A test orders events with this instead of timing (a ``first_byte_delay`` long enough
        "in practice"): hold, act, then release when the awaited event has happened. Call
        both from the emulator's event loop.
        """
        self._files_open.clear()

    def release_files(self) -> None:
        """Let held and later file GETs go on (undoes :meth:`hold_files`)."""
        self._files_open.set()

    async def wait_files_held(self, n: int) -> None:
        """Return once at least ``n`` file GETs wait at the gate of :meth:`hold_files`."""
        async with self._held_changed:
            await self._held_changed.wait_for(lambda: self.files_held >= n)

    async def wait_files_sent(self) -> None:
        """Return once no file body is being sent (each one finished, cut, or met a client
        that hung up)."""
        async with self._held_changed:
            await self._held_changed.wait_for(lambda: self.files_sending == 0)

    def file_bytes(self, path_or_url: str) -> bytes:
        """Exactly the bytes served for a file URL or path (KeyError when it would be a 404)."""
        path = urlsplit(path_or_url).path if "://" in path_or_url else path_or_url
        found = self._resolve(path)
        if found is None:
            raise KeyError(path)
        key, make, _etag_value, _mtime = found
        return bytes(self._body_sync(key, make))

    # -- file resolution ----------------------------------------------------------------------

    def _fits_key(self, record: Record, seg: Segment) -> str:
        """Cache key (and ETag seed) of a record's segment file."""
        size = self.knobs.size_for(record.series.name, seg.name)
        return (
            f"fits|{self.knobs.seed}|{record.series.name.lower()}|{record.recnum}|{seg.name}|{size}"
        )

    def _fits_maker(self, record: Record, seg: Segment) -> Callable[[], memoryview]:
        """A function generating a record's segment file."""
        size = self.knobs.size_for(record.series.name, seg.name)
        key = self._fits_key(record, seg).encode()

        def make() -> memoryview:
            return make_fits(_fits_keywords(record), size, key)

        return make

    def _resolve(self, path: str) -> tuple[str, Callable[[], memoryview], str, float] | None:
        """What ``path`` serves: (cache key, generator, ETag, mtime), or None for 404."""
        m = _SUMS_RE.match(path)
        if m is None:
            return None
        sum_n, sunum, slot, name = int(m[1]), int(m[2]), int(m[3]), m[4]
        exp = self.state.by_sunum.get(sunum)
        if exp is not None:
            if exp.real_dir != f"/SUM{sum_n}/D{sunum}/S{slot:05d}" or slot != 0:
                return None
            return self._resolve_export(exp, name)
        hit = self.catalog.resolve_sums_path(path)
        if hit is None:
            return None
        record, seg = hit
        if missing(self.state, record, seg) or offline(self.state, record):
            return None  # an offline storage unit's files are not on disk
        key = self._fits_key(record, seg)
        return key, self._fits_maker(record, seg), _etag(key), _SERIES_MTIME

    def _resolve_export(
        self, exp: Export, name: str
    ) -> tuple[str, Callable[[], memoryview], str, float] | None:
        """A file inside an export directory, while the export is done and not expired."""
        if exp.phase(self.clock.now(), self.knobs.retention) != "done":
            return None
        base = f"export|{exp.request_id}|"
        texts: dict[str, Callable[[Export], str]] = {
            "index.json": index_json, "index.html": index_html, "index.txt": index_txt,
        }
        if not exp.is_fits:
            texts[f"{exp.request_id}.keywords.txt"] = _keywords_txt
        write = texts.get(name)
        if write is not None:
            text = write(exp)
            return (
                base + name,
                lambda: memoryview(text.encode("latin-1", "replace")),
                _etag(base + text),
                exp.done_at,
            )
        if exp.is_tar:
            if name != f"{exp.request_id}.tar":
                return None
            members = [(r.filename, r.source) for r in exp.rows if r.source is not None]

            def make_tar() -> memoryview:
                return build_tar(
                    ((fn, self._body_sync(self._fits_key(*src), self._fits_maker(*src)))
                     for fn, src in members),
                    exp.done_at,
                )  # fmt: skip

            return base + name, make_tar, _etag(base + name), exp.done_at
        row = next((r for r in exp.rows if r.filename == name and r.source is not None), None)
        if row is None or row.source is None:
            return None
        key = self._fits_key(*row.source)
        return key, self._fits_maker(*row.source), _etag(key), exp.done_at

    def _body_sync(self, key: str, make: Callable[[], memoryview]) -> memoryview:
        """The cached body for ``key``, generating it now if needed."""
        self.cache.max_bytes = self.knobs.cache_bytes
        body = self.cache.get(key)
        if body is None:
            body = make()
            self.cache.put(key, body)
        return body

    async def _body(self, key: str, make: Callable[[], memoryview]) -> memoryview:
        """The cached body for ``key``; big bodies are generated in a worker thread, once."""
        body = self.cache.get(key)
        if body is not None:
            return body
        pending = self._generating.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[memoryview] = asyncio.get_running_loop().create_future()
        self._generating[key] = fut
        try:
            body = await asyncio.to_thread(self._body_sync, key, make)
            fut.set_result(body)
            return body
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: nobody else may be waiting
            raise
        finally:
            del self._generating[key]

    # -- the application ------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        """Routes and middleware."""
        app = web.Application(middlewares=[self._guard])
        app[EMULATOR_KEY] = self
        for name, handler in (
            ("jsoc_info", self._jsoc_info),
            ("jsoc_fetch", self._jsoc_fetch),
            ("checkAddress.sh", self._check_address),
            ("showextseries", self._showextseries),
            ("show_series", self._show_series),
        ):
            app.router.add_route("GET", CGI + name, _cgi(handler))
            app.router.add_route("POST", CGI + name, _cgi(handler))
        app.router.add_get("/_emulator/audit", self._audit_json)
        app.router.add_get(r"/SUM{n:\d+}/{rest:.+}", self._file)
        return app

    def _client_ip(self, request: web.Request) -> str:
        """The client IP (from X-Forwarded-For when the knob trusts it)."""
        if self.knobs.trust_forwarded_for:
            fwd = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
            if fwd:
                return fwd
        return request.remote or "unknown"

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Audit every request; apply IP blocks, connection caps and HTTP-level faults."""
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        knobs = self.knobs
        if knobs.time_scale != self.clock.scale:
            self.clock.scale = knobs.time_scale
        ip = self._client_ip(request)
        is_cgi = request.path.startswith(CGI)
        request[IP_KEY] = ip
        request[STATUS_KEY] = None
        start = self.clock.now()
        op = "file"
        if is_cgi:
            op = request.path[len(CGI) :]
        resp: web.StreamResponse
        ipst = self.state.ip_state(ip)
        blocked = self.state.admit(ip)
        if blocked is not None:
            resp = _retry(403, self.clock.wall_seconds(blocked), "IP temporarily blocked")
        elif knobs.max_connections is not None and ipst.in_flight >= knobs.max_connections:
            resp = _retry(503, knobs.retry_after, "Too many connections")
        elif self.state.chance(knobs.http429_rate):
            resp = _retry(429, knobs.retry_after, "Too Many Requests")
        elif is_cgi and self.state.chance(knobs.http500_rate):
            resp = web.Response(status=500, text="Internal Server Error")
        elif is_cgi and self.state.chance(knobs.http503_rate):
            resp = _retry(503, knobs.retry_after, "Service Unavailable")
        else:
            ipst.in_flight += 1
            try:
                if is_cgi and knobs.cgi_delay > 0:
                    await asyncio.sleep(knobs.cgi_delay)
                resp = await handler(request)
            except web.HTTPException as exc:
                # Routing misses (a path outside /SUM…) arrive as exceptions: answer them.
                resp = web.Response(status=exc.status, text=exc.text, headers=exc.headers)
            finally:
                ipst.in_flight -= 1
        params = request.get(PARAMS_KEY, {})
        if is_cgi and params.get("op"):
            op = f"{op}/{params['op']}"
        self.audit.entries.append(
            RequestEntry(
                time=start,
                ip=ip,
                method=request.method,
                path=request.path,
                op=op,
                params=dict(params),
                http_status=resp.status,
                status=request.get(STATUS_KEY),
                range=request.headers.get("Range"),
                if_range=request.headers.get("If-Range"),
            )
        )
        return resp

    async def _audit_json(self, request: web.Request) -> web.Response:
        """``GET /_emulator/audit``: the audit as JSON."""
        return web.json_response(self.audit.to_json())

    # -- CGIs ---------------------------------------------------------------------------------

    async def _jsoc_info(self, request: web.Request, params: dict[str, str]) -> web.StreamResponse:
        """``jsoc_info`` (read-only, so big listings run in a worker thread)."""
        body = await asyncio.to_thread(jsoc_info, self.state, self.catalog, params)
        hostile = self.knobs.hostile_cgi.get(params.get("op", ""))
        if hostile is not None:
            return await self._broken(request, hostile, body)
        return _json(request, body)

    async def _jsoc_fetch(self, request: web.Request, params: dict[str, str]) -> web.StreamResponse:
        """``jsoc_fetch``."""
        from asyncjsoc.emulator._catalog import expand_filenamefmt

        op = params.get("op", "")
        result: dict[str, Any] | str
        hostile = self.knobs.hostile_cgi.get(op) if op in ("exp_request", "exp_status") else None
        if hostile is not None and op == "exp_status" and self.knobs.hostile_exports:
            exp = self.state.exports.get(params.get("requestid", "").strip())
            if exp is None or exp.number not in self.knobs.hostile_exports:
                hostile = None
        if op == "exp_request":
            result = exp_request(
                self.state, self.catalog, params, request[IP_KEY], expand_filenamefmt
            )
        elif op == "exp_status":
            result = exp_status(self.state, params)
        elif op == "exp_repeat":
            result = {"status": 4, "error": "Re-Export requests temporarily disabled."}
        else:
            result = {"status": 4, "error": f"Invalid operation '{op}'."}
        if hostile is not None:
            return await self._broken(request, hostile, result)
        if isinstance(result, str):
            request[STATUS_KEY] = 0
            ctype = "text/plain" if params.get("format") == "txt" else "application/json"
            return web.Response(body=result.encode("latin-1", "replace"), content_type=ctype)
        if params.get("format", "json").lower() == "txt":
            request[STATUS_KEY] = result.get("status")
            lines = [f"{k}={v}" for k, v in result.items() if not isinstance(v, list)]
            return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
        return _json(request, result)

    async def _check_address(
        self, request: web.Request, params: dict[str, str]
    ) -> web.StreamResponse:
        """``checkAddress.sh`` (Python-style JSON, as checkAddress.py prints it)."""
        body = check_address(self.state, params)
        hostile = self.knobs.hostile_cgi.get("checkAddress")
        if hostile is not None:
            return await self._broken(request, hostile, body)
        return _json(request, body, python=True)

    async def _broken(
        self, request: web.Request, kind: str, real: dict[str, Any] | str
    ) -> web.StreamResponse:
        """A broken CGI answer of ``kind`` (see ``Knobs.hostile_cgi``), HTTP 200."""
        request[STATUS_KEY] = f"hostile:{kind}"
        body = broken_json(kind, real)
        if body is not None:
            ctype = "text/html" if kind == "html" else "application/json"
            return web.Response(body=body, content_type=ctype)
        size = self.knobs.huge_body_bytes
        head, tail = b'{"status":0,"pad":"', b'"}\n'
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if kind == "huge-length":
            resp.content_length = size
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        piece = b"x" * (1 << 16)
        left = size - len(head) - len(tail)
        try:
            await resp.write(head)
            while left > 0:
                n = min(left, len(piece))
                await resp.write(piece[:n])
                left -= n
            await resp.write(tail)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return resp

    async def _showextseries(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """``showextseries``."""
        return _json(request, showextseries(self.catalog, params), python=True)

    async def _show_series(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """``show_series``."""
        answer = show_series(self.catalog, params)
        if isinstance(answer, str):  # the server's unquoted error message: not JSON
            request[STATUS_KEY] = 1
            return web.Response(text=answer, content_type="application/json")
        return _json(request, answer)

    # -- files ----------------------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.StreamResponse:
        """Static SUMS/export files with Range, If-Range, ETag and the file faults."""
        knobs = self.knobs
        path = request.path
        found = self._resolve(path)
        stats = self.audit.file(path)
        if request.method == "GET":
            stats.gets += 1
            stats.ranges.append(request.headers.get("Range"))
        if found is None:
            return web.Response(status=404, text="Not Found")
        if "redirected" not in request.query and rate_hit(
            knobs.seed, "redirect", path, knobs.redirect_rate
        ):
            return web.Response(
                status=302, headers={"Location": f"{knobs.redirect_to}{path}?redirected=1"}
            )
        key, make, etag, mtime = found
        body = await self._body(key, make)
        size = len(body)
        last_modified = format_datetime(datetime.fromtimestamp(int(mtime), UTC), usegmt=True)
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": last_modified,
            "Content-Type": "text/html" if path.endswith(".html") else "application/octet-stream",
        }
        start, end, status = 0, size - 1, 200
        rng = request.headers.get("Range")
        if rng is not None and not self.state.chance(knobs.ignore_range_rate):
            if_range = request.headers.get("If-Range")
            if if_range is None or if_range.strip() in (etag, last_modified):
                parsed = _parse_range(rng, size)
                if parsed == "unsatisfiable":
                    return web.Response(
                        status=416, headers={**headers, "Content-Range": f"bytes */{size}"}
                    )
                if isinstance(parsed, tuple):
                    start, end = parsed
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if not self._files_open.is_set():
            self.files_held += 1
            async with self._held_changed:
                self._held_changed.notify_all()
            try:
                await self._files_open.wait()
            finally:
                self.files_held -= 1
        if knobs.first_byte_delay > 0:
            await asyncio.sleep(knobs.first_byte_delay)
        length = end - start + 1
        cut: int | None = None
        abort = False
        if request.method == "GET" and length > 0:
            if self.state.chance(knobs.drop_rate):
                cut, abort = self.state.rng.randrange(length), True
            elif self.state.chance(knobs.truncate_rate):
                cut = self.state.rng.randrange(length)
        flip: int | None = None  # absolute offset of the byte sent flipped
        if request.method == "GET" and length > 0 and self.state.chance(knobs.corrupt_rate):
            flip = start + self.state.rng.randrange(length)
            stats.corrupted += 1
        stall: int | None = None  # absolute offset where the transfer goes silent
        if request.method == "GET" and length > 1 and self.state.chance(knobs.stall_rate):
            stall = start + self.state.rng.randrange(1, length)
        junk = b""
        oversize = pick(knobs.seed, knobs.oversize_files, path) if status == 200 else None
        if oversize is not None and cut is None:
            junk = b"J" * knobs.oversize_bytes
        resp = web.StreamResponse(status=status, headers=headers)
        if oversize == "chunked" and junk:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = length + len(junk)
        await resp.prepare(request)
        if request.method != "GET":
            await resp.write_eof()
            return resp
        stop = start + (length if cut is None else cut)
        pos = start
        step = CHUNK
        if knobs.bandwidth:
            step = max(1, min(CHUNK, int(knobs.bandwidth // 20)))
        self.files_sending += 1
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            while pos < stop:
                if pos == stall:
                    stats.stalled += 1
                    await _stay_silent(request, knobs.stall_seconds)
                n = min(step, stop - pos)
                if stall is not None and pos < stall:
                    n = min(n, stall - pos)
                piece: bytes | memoryview = body[pos : pos + n]
                if flip is not None and pos <= flip < pos + n:
                    changed = bytearray(piece)
                    changed[flip - pos] ^= 0xFF
                    piece = bytes(changed)
                await resp.write(piece)
                pos += n
                stats.bytes_sent += n
                if knobs.bandwidth:
                    ahead = (pos - start) / knobs.bandwidth - (loop.time() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            if cut is not None:
                transport = request.transport
                if transport is not None:
                    if abort:
                        transport.abort()
                    else:
                        transport.close()
                return resp
            if junk:
                await resp.write(junk)
            if end == size - 1:
                stats.complete += 1
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client hung up mid-body (cancelled, or gave up): nothing to report
        finally:
            self.files_sending -= 1
            async with self._held_changed:
                self._held_changed.notify_all()
        return resp


EMULATOR_KEY = web.AppKey("emulator", Emulator)
IP_KEY = web.RequestKey("ip", str)
STATUS_KEY = web.RequestKey("json_status", object)
PARAMS_KEY = web.RequestKey("params", dict)


async def _stay_silent(request: web.Request, seconds: float) -> None:
    """Send nothing for ``seconds`` wall seconds, or until the client hangs up."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while (left := until - loop.time()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(min(left, 0.05))


def _etag(key: str) -> str:
    """A strong ETag derived from a content key."""
    return '"' + hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=12).hexdigest() + '"'


def _retry(status: int, seconds: float, text: str) -> web.Response:
    """An HTTP error with a Retry-After header (whole seconds, at least 1)."""
    return web.Response(
        status=status, text=text, headers={"Retry-After": str(max(1, math.ceil(seconds)))}
    )


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range as (start, end); ``"unsatisfiable"``; None to ignore the header."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if m is None or (not m[1] and not m[2]):
        return None
    if not m[1]:
        suffix = int(m[2])
        if suffix == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(m[1])
    if first >= size:
        return "unsatisfiable"
    last = int(m[2]) if m[2] else size - 1
    if last < first:
        return None
    return first, min(last, size - 1)


def parse_params(raw: str) -> dict[str, str]:
    """CGI parameters the JSOC way: split on ``&``, percent-decode each pair, split at ``=``."""
    out: dict[str, str] = {}
    for pair in raw.split("&"):
        if not pair:
            continue
        key, _, value = unquote_plus(pair, encoding="latin-1").partition("=")
        out.setdefault(key, value)
    return out


def _cgi(
    fn: Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a CGI: gather GET and POST parameters, then call ``fn``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.partition("?")[2]
        params = parse_params(raw)
        if request.method == "POST":
            if request.content_type.startswith("multipart/"):
                form = await request.post()
                for k, v in form.items():
                    params.setdefault(k, str(v))
            else:
                body = (await request.read()).decode("latin-1")
                for k, v in parse_params(body).items():
                    params.setdefault(k, v)
        request[PARAMS_KEY] = params
        return await fn(request, params)

    return handler


def _json(request: web.Request, obj: dict[str, Any], *, python: bool = False) -> web.Response:
    """A JSON reply as the server prints it (C writer: compact with ``\\/``; Python: spaced)."""
    request[STATUS_KEY] = obj.get("status")
    if python:
        text = json.dumps(obj, ensure_ascii=False)
    else:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")
    return web.Response(
        body=(text + "\n").encode("latin-1", "replace"), content_type="application/json"
    )


def _fits_keywords(record: Record) -> list[tuple[str, FitsValue]]:
    """Header keywords of a record's files: typed values of its first keywords."""
    out: list[tuple[str, FitsValue]] = []
    series = record.series
    prime = [k for k in (series.keyword(n) for n in series.primekeys) if k is not None]
    rest = [k for k in series.keywords if k.name not in series.primekeys]
    for kw in [*prime, *rest][:_MAX_KEYWORDS]:
        try:
            text = record.key(kw.name)
        except KeyError:
            continue
        if text in ("MISSING", "") or "nan" in text.lower():
            continue
        value: FitsValue = text
        try:
            if kw.type in _INT_TYPES:
                value = int(text, 0)
            elif kw.type in ("float", "double"):
                value = float(text)
        except ValueError:
            value = text
        out.append((kw.name, value))
    return out


def _keywords_txt(exp: Export) -> str:
    """An as-is export's ``<id>.keywords.txt``: a ``# record`` line, then ``KEY=value`` lines."""
    blocks: list[str] = []
    seen: set[str] = set()
    for row in exp.rows:
        if row.source is None:
            continue
        record = row.source[0]
        spec = record.spec()
        if spec in seen:
            continue
        seen.add(spec)
        lines = [f"# {spec}"] + [f"{k}={v}" for k, v in _fits_keywords(record)]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def create_app(knobs: Knobs | None = None) -> web.Application:
    """A ready aiohttp application emulating the JSOC (its Emulator is ``app[EMULATOR_KEY]``).

    Parameters
    ----------
    knobs : Knobs or None
        Rules and faults; defaults to ``Knobs()``.
    """
    return Emulator(knobs).app


@contextlib.asynccontextmanager
async def run_emulator(
    knobs: Knobs | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Emulator]:
    """Serve an emulated JSOC on ``host:port`` (0 = a free port) for the ``async with`` body.

    Parameters
    ----------
    knobs : Knobs or None
        Rules and faults; defaults to ``Knobs()``.
    host : str
        Interface to bind (only loopback is sensible).
    port : int
        TCP port; 0 picks a free one (see ``Emulator.url``).

    Yields
    ------
    Emulator
        The running emulator; ``url`` holds ``http://HOST:PORT``.
    """
    emulator = Emulator(knobs)
    runner = web.AppRunner(emulator.app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        real_port = port
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                real_port = int(address[1])
                break
        emulator.url = f"http://{host}:{real_port}"
        yield emulator
    finally:
        await runner.cleanup()
