"""Every rule and fault of the emulated JSOC as one mutable dataclass.

Rules default to what the real server does (protocol doc §5, §10); faults are all off. Durations
marked *emulator seconds* run on the emulator clock (see ``_clock.Clock``, ``time_scale``); the
others are wall-clock seconds because they shape real socket I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Knobs"]


def _default_file_caps() -> dict[str, int]:
    """Files-per-request caps by series-name prefix (the brief's AIA/HMI numbers)."""
    return {"aia.": 15_000, "hmi.": 30_000}


@dataclass(kw_only=True)
class Knobs:
    """Rules and faults of the emulated JSOC; mutable at runtime (``Emulator.knobs``).

    Parameters
    ----------
    seed : int
        Seed of the one ``random.Random`` that decides every fault, so runs are repeatable.
    time_scale : float
        Emulator seconds per wall second (100 makes a 10 s export take 0.1 s).
    export_delay : float
        Emulator seconds from ``exp_request`` until the export reaches status 0 (or 4).
    eta_seconds : float | None
        Emulator seconds from ``exp_request`` to the estimate its ``wait`` counts down to.
        The real server stores EstTime = request + 10 s whatever the export will take, and
        prints ``wait`` = EstTime - now rounded to whole seconds (``%1.0lf``), so it reads 10
        on a new request and 0 or less once those 10 s have passed (protocol §5.9, §6).
        ``None`` makes an ideal server instead, whose ``wait`` is the true time left
        (``export_delay`` counted down, with decimals).
    retention : float
        Emulator seconds a finished export stays online; afterwards status 5 and file 404s.
    pending_timeout : float
        Emulator seconds after which a pending slot frees itself (server: 60 min).
    duplicate_window : float
        Emulator seconds an export's MD5 is remembered for the duplicate check (24 h).
    max_pending_per_email : int
        Pending exports an email may hold; the next request gets status 7.
    max_pending_per_ip : int
        A request finding more than this many pending exports from its IP gets status 7
        (the server's ``> 10``), so an IP can hold one more than this.
    max_records : int
        Records one export may open ("Can not open RecordSet ... too many records").
    size_cap_mb : int
        Size cap of one export in MB; over it: status 3, requestid "VOID".
    file_caps : dict[str, int]
        Files-per-export caps by lower-case series-name prefix (longest prefix wins). The real
        form is unknown (protocol §13); the emulator answers like the size cap: status 3,
        requestid "VOID", error "Request exceeds max file limit of <N> files".
    file_size : int
        Approximate bytes of every generated FITS file (rounded to whole 2880-byte blocks).
    file_sizes : dict[str, int]
        Per-series (``"hmi.m_45s"``) or per-segment (``"hmi.m_45s:magnetogram"``) overrides.
    missing_segment_rate : float
        Fraction of (record, segment) pairs whose file is missing (NoDataFile rows, 404s).
    pending_emails, unknown_emails, expired_emails : set[str]
        Registration state of specific addresses; every other well-formed address is registered.
    rate_budget : int | None
        Requests one IP may make per ``rate_window``; the next one blocks the IP.
    rate_window : float
        Emulator seconds of the sliding request-rate window.
    block_seconds : float
        Emulator seconds a blocked IP gets HTTP 403 + Retry-After on every request.
    status6_polls : int
        The first K ``exp_status`` polls of each export answer the legacy status 6.
    hash_error_rate : float
        Chance that a new ``exp_request`` fails with 4 "Cant save new export-request hash.".
    export_failure_rate : float
        Chance that an export ends in status 4 instead of 0.
    http500_rate, http503_rate : float
        Chance that a CGI call answers HTTP 500 / 503.
    http429_rate : float
        Chance that any request (CGI or file) answers HTTP 429 with Retry-After.
    retry_after : float
        Seconds sent in Retry-After with 429 and 503 answers.
    cgi_delay : float
        Wall seconds every CGI answer is held back (a slow server).
    drop_rate : float
        Chance that a file transfer is cut (connection aborted) at a random offset.
    truncate_rate : float
        Chance that a file body ends early while Content-Length promised the full length.
    corrupt_rate : float
        Chance that one byte of a file transfer arrives flipped (full length, the file on
        the server unchanged): what only a checksum catches.
    stall_rate : float
        Chance that a file transfer stops after a random number of bytes (at least one) and
        keeps the connection open, silent, for ``stall_seconds`` wall seconds before sending
        the rest: a link that hangs mid-body.
    stall_seconds : float
        How long a stalled transfer stays silent.
    ignore_range_rate : float
        Chance that a Range request gets 200 with the whole body.
    bandwidth : int | None
        Bytes per second per file transfer.
    max_connections : int | None
        Concurrent requests one client IP may have in flight; excess requests get HTTP 503
        with Retry-After at once (no queueing).
    first_byte_delay : float
        Wall seconds before a file's headers are sent.
    trust_forwarded_for : bool
        Take the client IP from ``X-Forwarded-For`` (lets tests act as several IPs).
    cache_bytes : int
        Bound of the LRU cache of generated file bodies.
    offline_rate : float
        Fraction of records whose storage units are offline (seeded, stable per record). A
        ``url_quick``/``as-is`` request touching one becomes a staged export (an id is issued,
        status 2), or status 25 when the request sets the ``o`` flag (protocol §5.8).
    hostile_names : dict[str, float]
        Hostile server: kind → fraction of export data rows (per record and segment, seeded)
        whose ``filename`` is replaced by an unsafe one. Kinds: ``"dotdot"`` (``../`` escapes),
        ``"absolute"`` (``/tmp/...``), ``"nul"`` (a NUL byte), ``"backslash"`` (``..\\``
        escapes), ``"long"`` (a 252-byte name: legal, but with a ``.part`` suffix it would
        pass the 255-byte limit). Applies to ``index.json``/``index.txt`` rows and to
        ``url_quick`` SUMS paths.
    hostile_dirs : dict[str, float]
        Hostile server: kind → fraction of staged exports (per request id) whose ``dir`` is
        unsafe: ``"dotdot"`` (``/SUM1/../../tmp``), ``"relative"`` (no leading ``/``),
        ``"url"`` (an absolute URL on another host), ``"nul"``.
    hostile_cgi : dict[str, str]
        Hostile server: CGI op (``"exp_request"``, ``"exp_status"``, ``"series_struct"``,
        ``"rs_summary"``, ``"rs_list"``, ``"checkAddress"``) → kind of broken answer:
        ``"html"`` (an HTML page with HTTP 200), ``"truncated"`` (JSON cut short),
        ``"array"`` (JSON that is not an object), ``"huge"`` (``huge_body_bytes`` of padding
        streamed without Content-Length), ``"huge-length"`` (the same with Content-Length),
        ``"status-abc"``/``"status-null"``/``"status-list"`` (the real answer with a
        ``status`` of the wrong type).
    hostile_exports : set[int]
        Limits ``hostile_cgi["exp_status"]`` and ``hostile_dirs`` to these exports (1 = the
        first export this emulator made); empty means every export.
    huge_body_bytes : int
        Size of a ``"huge"`` CGI body; it is streamed in small pieces, never held at once.
    redirect_rate : float
        Fraction of file paths (seeded, stable per path) answered with HTTP 302.
    redirect_to : str
        Where redirected files point: another origin (``http://127.0.0.2:1``, the default,
        where nothing listens), or ``""`` for the same path on this server (then served).
    oversize_files : dict[str, float]
        Hostile server: kind → fraction of file paths whose body is longer than the file:
        ``"padded"`` (Content-Length covers ``oversize_bytes`` of junk after the file),
        ``"chunked"`` (no Content-Length; the junk follows the file).
    oversize_bytes : int
        Junk bytes appended by ``oversize_files``.
    """

    seed: int = 0
    time_scale: float = 1.0
    export_delay: float = 1.0
    eta_seconds: float | None = 10.0
    retention: float = 7 * 86400.0
    pending_timeout: float = 3600.0
    duplicate_window: float = 86400.0
    max_pending_per_email: int = 1
    max_pending_per_ip: int = 10
    max_records: int = 1_000_000
    size_cap_mb: int = 100_000
    file_caps: dict[str, int] = field(default_factory=_default_file_caps)
    file_size: int = 64 * 1024
    file_sizes: dict[str, int] = field(default_factory=dict)
    missing_segment_rate: float = 0.0
    pending_emails: set[str] = field(default_factory=set)
    unknown_emails: set[str] = field(default_factory=set)
    expired_emails: set[str] = field(default_factory=set)
    rate_budget: int | None = None
    rate_window: float = 60.0
    block_seconds: float = 600.0
    status6_polls: int = 0
    hash_error_rate: float = 0.0
    export_failure_rate: float = 0.0
    http500_rate: float = 0.0
    http503_rate: float = 0.0
    http429_rate: float = 0.0
    retry_after: float = 1.0
    cgi_delay: float = 0.0
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    corrupt_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 60.0
    ignore_range_rate: float = 0.0
    bandwidth: int | None = None
    max_connections: int | None = None
    first_byte_delay: float = 0.0
    trust_forwarded_for: bool = False
    cache_bytes: int = 512 * 1024 * 1024
    offline_rate: float = 0.0
    hostile_names: dict[str, float] = field(default_factory=dict)
    hostile_dirs: dict[str, float] = field(default_factory=dict)
    hostile_cgi: dict[str, str] = field(default_factory=dict)
    hostile_exports: set[int] = field(default_factory=set)
    huge_body_bytes: int = 100 * 1024 * 1024
    redirect_rate: float = 0.0
    redirect_to: str = "http://127.0.0.2:1"
    oversize_files: dict[str, float] = field(default_factory=dict)
    oversize_bytes: int = 4 * 2880

    def file_cap(self, series: str) -> int | None:
        """The files-per-export cap for ``series`` (longest matching prefix), if any."""
        name = series.lower()
        best: tuple[int, int] | None = None
        for prefix, cap in self.file_caps.items():
            if name.startswith(prefix.lower()) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), cap)
        return None if best is None else best[1]

    def size_for(self, series: str, segment: str) -> int:
        """The target byte size of a file of ``series``/``segment``."""
        s = series.lower()
        sizes = {k.lower(): v for k, v in self.file_sizes.items()}
        for key in (f"{s}:{segment.lower()}", s):
            if key in sizes:
                return sizes[key]
        return self.file_size
