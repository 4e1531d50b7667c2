"""The ``asyncjsoc`` command line.

Sub-commands: ``fetch`` (download), ``plan`` (show how a query would be split, export
nothing), ``check-email`` (registration status), ``series`` (series names), ``extract``
(unpack url-tar tars), ``status`` (where a pull stands, read-only), ``demo`` (a complete pull
from an in-process emulator) and ``emulator`` (run the JSOC emulator).

Exit codes: 0 every requested file is on disk and verified (its size, and its FITS checksums
unless ``--no-checksums``); 1 some failed (or the server could not be used); 2 usage errors
and bad input; 130 interrupted by Ctrl-C (SIGINT); 143 terminated (SIGTERM). After 130/143
the state is saved: rerunning the same command resumes.

This is the only place that reads environment variables (``ASYNCJSOC_SERVER``,
``ASYNCJSOC_EMAILS``) and installs signal handlers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from asyncjsoc._cli_parser import (
    DEFAULT_SERVER,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    build_command_parser,
)
from asyncjsoc.exceptions import (
    EmailNotRegisteredError,
    InvalidInputError,
    JsocError,
    QueryError,
    StateError,
    StateLockedError,
    StateMismatchError,
    TransportError,
)

__all__ = [
    "DEFAULT_SERVER",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

REGISTER_URL = "http://jsoc.stanford.edu/ajax/register_email.html"

_SIGNAL_EXIT = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}

SLOW_REQUESTS_S = 600.0
"""A plan whose file requests alone need this long at the request rate gets the url-tar hint."""

# Errors that mean "the input is wrong": exit 2, and rerunning unchanged will not help.
_INPUT_ERRORS: tuple[type[JsocError], ...] = (
    InvalidInputError,
    QueryError,
    EmailNotRegisteredError,
    StateLockedError,
)


class UsageError(Exception):
    """A problem with the command line itself: printed as one line, exit code 2."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# Errors after which a fetch removes what it created (nothing useful was written).
_BAD_INPUT: tuple[type[Exception], ...] = (UsageError, *_INPUT_ERRORS)


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per job (see :mod:`asyncjsoc._cli_parser`)."""
    return build_command_parser({
        "fetch": _cmd_fetch, "plan": _cmd_plan, "check-email": _cmd_check_email,
        "series": _cmd_series, "extract": _cmd_extract, "status": _cmd_status,
        "demo": _cmd_demo,
    })


# --- entry point -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code.

    Parameters
    ----------
    argv
        Arguments without the program name; ``None`` uses ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit code (see the module docstring).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    debug = bool(getattr(args, "debug", False))
    try:
        return handler(args)
    except UsageError as exc:
        _report_error(args, exc.message, exc.hint, debug=debug)
        return EXIT_USAGE
    except JsocError as exc:
        if debug:  # the traceback too, with the exit code it would have had
            traceback.print_exc(file=sys.stderr)
        hint = exc.hint
        if isinstance(exc, TransportError) and (hint is None or hint == _network_hint()):
            # The same advice, naming the server it could not reach.
            from asyncjsoc._privacy import redact_url

            server = getattr(args, "server", None) or os.environ.get("ASYNCJSOC_SERVER")
            hint = (f"is the server {redact_url(server or DEFAULT_SERVER)} right and reachable "
                    "from here? rerun the same command to try again")
        if _is_other_pull(exc):
            # The library's hint names its API (reset=); say it in command-line terms.
            hint = ("give this query another --out, or its own state file with --state PATH "
                    "(files already downloaded are kept)")
        _report_error(args, exc.message, hint, debug=debug)
        return EXIT_USAGE if isinstance(exc, _INPUT_ERRORS) or _is_other_pull(exc) \
            else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an unmapped OS error: still one line by default
        if debug:
            raise
        _report_error(args, f"unexpected {type(exc).__name__}: {exc}",
                      "rerun with --debug for the full traceback", debug=debug)
        return EXIT_FAILED


def _report_error(args: argparse.Namespace, message: str, hint: str | None, *,
                  debug: bool) -> None:
    """The error line on stderr; with ``--json`` also the one object on stdout, so a script
    reading stdout always gets one: ``{"ok": false, "error": ..., "hint": ...}``."""
    _print_error(message, hint, debug=debug)
    if getattr(args, "json", False):
        from asyncjsoc._progress import mask_emails

        def shown(text: str) -> str:
            text = " ".join(text.split())
            return text if debug else mask_emails(text[:MAX_ERROR_CHARS])

        _emit_json({"ok": False, "error": shown(message),
                    "hint": shown(hint) if hint else None}, sys.stdout)


MAX_ERROR_CHARS = 600
"""An error message longer than this is cut (without ``--debug``)."""


def _print_error(message: str, hint: str | None, *, debug: bool) -> None:
    """One line on stderr: the problem and what to do about it."""
    from asyncjsoc._progress import mask_emails

    if len(message) > MAX_ERROR_CHARS and not debug:  # it may quote a huge input
        message = message[:MAX_ERROR_CHARS] + "..."
    text = message if hint is None else f"{message}; {hint}"
    if not debug:
        text = mask_emails(text)
    sys.stderr.write(f"asyncjsoc: error: {' '.join(text.split())}\n")
    sys.stderr.flush()


def _network_hint() -> str:
    """The library's hint for a network failure (imported late: it loads aiohttp)."""
    from asyncjsoc._http import NETWORK_HINT

    return NETWORK_HINT


def _run(work: Callable[[], Awaitable[int]]) -> int:
    """Run ``work`` on an event loop; SIGINT and SIGTERM cancel it and give 130 / 143."""
    try:
        return anyio.run(_with_signals, work)
    except KeyboardInterrupt:  # a signal that arrived before our handler was in place
        return EXIT_INTERRUPTED


async def _with_signals(work: Callable[[], Awaitable[int]]) -> int:
    """Await ``work`` next to a signal watcher that cancels it on SIGINT or SIGTERM.

    The watcher keeps the signals until ``work`` has returned: a second Ctrl-C (or a
    SIGINT that a wrapper forwards as the terminal sends its own) arriving while ``work``
    saves its state is noted, not raised as ``KeyboardInterrupt`` in the middle of that.
    """
    received: list[signal.Signals] = []
    result = EXIT_FAILED
    error: Exception | None = None
    work_scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def watch(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            """Cancel ``work`` on the first signal; hold the others until it has ended."""
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    received.append(signum)
                    if len(received) == 1:
                        work_scope.cancel()
                    elif len(received) == 2:
                        sys.stderr.write("asyncjsoc: already stopping: saving the state, "
                                         "then exiting\n")
                        sys.stderr.flush()

        await tg.start(watch)
        with work_scope:
            try:
                result = await work()
            except Exception as exc:  # re-raised below, outside the group, unwrapped
                error = exc
        tg.cancel_scope.cancel()
    if received:
        return _SIGNAL_EXIT.get(received[0], EXIT_INTERRUPTED)
    if error is not None:
        raise error
    return result


# --- shared option handling ----------------------------------------------------------------


def _server(args: argparse.Namespace) -> str:
    """--server, else $ASYNCJSOC_SERVER, else the JSOC."""
    server: str = args.server or os.environ.get("ASYNCJSOC_SERVER") or DEFAULT_SERVER
    if not server.startswith(("http://", "https://")):
        raise UsageError(f"--server must be an http(s) URL, not {server!r}",
                         "e.g. --server http://jsoc.stanford.edu")
    return server.rstrip("/")


def _emails(given: Sequence[str]) -> tuple[str, ...]:
    """The notify addresses: the options, else $ASYNCJSOC_EMAILS (comma-separated)."""
    raw = list(given) or os.environ.get("ASYNCJSOC_EMAILS", "").split(",")
    out: list[str] = []
    for item in raw:
        out.extend(e.strip() for e in item.split(",") if e.strip())
    return tuple(out)


def _segments(text: str | None) -> tuple[str, ...] | None:
    """``"Bp,Bt,Br"`` → ``("Bp", "Bt", "Br")``."""
    if text is None:
        return None
    segs = tuple(s.strip() for s in text.split(",") if s.strip())
    if not segs:
        raise UsageError("--segments is empty", "give names like --segments Bp,Bt,Br")
    return segs


def _primekeys(items: Sequence[str]) -> dict[str, str]:
    """``["HARPNUM=7302"]`` → ``{"HARPNUM": "7302"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise UsageError(f"--primekey {item!r} is not KEY=VALUE",
                             "e.g. --primekey HARPNUM=7302")
        if key.strip().upper() in (k.upper() for k in out):
            raise UsageError(f"--primekey {key.strip()} is given twice",
                             "give it once: one value, a list (7302,7310) or a range "
                             "(7300-7310)")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class _Selection:
    """What the user asked for, before it is turned into queries."""

    recordsets: tuple[str, ...]
    jobs: Path | None
    series: str | None
    segments: tuple[str, ...] | None
    start: str | None
    end: str | None
    cadence: str | None
    primekeys: dict[str, str]
    where: tuple[str, ...]


def _selection(args: argparse.Namespace) -> _Selection:
    """Check that exactly one way of selecting data was used, and that it is complete."""
    sel = _Selection(
        recordsets=tuple(args.recordsets),
        jobs=args.jobs,
        series=args.series,
        segments=_segments(args.segments),
        start=args.start,
        end=args.end,
        cadence=args.cadence,
        primekeys=_primekeys(args.primekey),
        where=tuple(args.where),
    )
    built_opts = [
        name for name, value in (
            ("--start", sel.start), ("--end", sel.end), ("--cadence", sel.cadence),
            ("--primekey", sel.primekeys), ("--where", sel.where),
        ) if value
    ]
    if sel.recordsets and sel.jobs is not None:
        raise UsageError("RECORDSET arguments and --jobs cannot be used together",
                         "give either record sets or a job file")
    if sel.recordsets and (built_opts or sel.series or sel.segments):
        extra = ", ".join(built_opts + [o for o, v in (("--series", sel.series),
                                                       ("--segments", sel.segments)) if v])
        raise UsageError(f"RECORDSET arguments cannot be combined with {extra}",
                         "write everything into the record set, e.g. "
                         "'hmi.sharp_cea_720s[7302][2018.09.30/1d]{Br,Bp}'")
    if sel.jobs is not None and built_opts:
        raise UsageError(f"--jobs cannot be combined with {', '.join(built_opts)}",
                         "the job file already names the records")
    if not sel.recordsets and sel.jobs is None:
        if not built_opts and not sel.series:
            raise UsageError("nothing selected",
                             "give RECORDSET..., --jobs FILE, or --series NAME --start T --end T")
        missing = [o for o, v in (("--series", sel.series), ("--start", sel.start),
                                  ("--end", sel.end)) if not v]
        if missing:
            raise UsageError(f"a built query needs {', '.join(missing)}",
                             "e.g. --series hmi.sharp_cea_720s --start 2018.09.30 --end "
                             "2018.10.01 --primekey HARPNUM=7302")
    if sel.jobs is not None and not sel.jobs.is_file():
        what = "is not a regular file" if sel.jobs.exists() else "does not exist"
        raise UsageError(f"job file {str(sel.jobs)!r} {what}",
                         "check the path given to --jobs")
    return sel


def _queries(sel: _Selection) -> list[Any]:
    """Turn a checked selection into query objects (record-set syntax is checked here)."""
    from asyncjsoc._query import Query

    if sel.recordsets:
        queries = [Query.from_recordset(text) for text in sel.recordsets]
        if len(queries) == 1:
            return queries
        series = {q.series.lower() for q in queries}
        if len(series) > 1:
            raise UsageError(
                f"the record sets name different series ({', '.join(sorted(series))})",
                "run one fetch per series, each with its own --out",
            )
        # One pull per output directory: DRMS joins subsets of one series with commas.
        return [Query.from_recordset(",".join(q.recordset() for q in queries))]
    if sel.jobs is not None:
        kwargs: dict[str, Any] = {"segments": sel.segments}
        if sel.series:
            kwargs["series"] = sel.series
        return [Query.from_job_file(sel.jobs, **kwargs)]
    if sel.series is None or sel.start is None or sel.end is None:  # checked in _selection
        raise UsageError("a built query needs --series, --start and --end")
    built = [
        Query.build(
            sel.series,
            start=sel.start,
            end=sel.end,
            cadence=sel.cadence,
            primekeys=sel.primekeys or None,
            segments=sel.segments,
            where=list(sel.where) or None,
        )
    ]
    return built


def _out_dir(path: Path) -> Path:
    """Create --out if needed and make sure files can be written there."""
    try:
        return _writable_dir(path)
    except OSError as exc:  # a name too long, a symlink loop...
        raise UsageError(f"cannot use --out {str(path)[:200]!r}: {exc.strerror or exc}",
                         "choose a directory you can write to") from None


def _writable_dir(path: Path) -> Path:
    """:func:`_out_dir`'s checks; an :class:`OSError` from a look at ``path`` escapes."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {str(path)!r} is a file, not a directory",
                         "give a directory (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --out {str(path)!r}: {exc.strerror or exc}",
                         "choose a directory you can write to") from None
    try:
        # A name of its own: two runs starting at once must not unlink each other's probe.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".asyncjsoc-write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write into --out {str(path)!r}: {exc.strerror or exc}",
                         "choose a directory you can write to") from None
    return path


def url_tar_hint(n_files: int, export_method: str, requests_per_second: float) -> str | None:
    """Suggest url-tar when one request per file would take long at the request rate.

    Shown by ``fetch`` (one ``hint:`` line) and ``plan`` (text output).

    Every file GET takes a token of the rate limiter, so ``n_files`` files need at least
    ``n_files / requests_per_second`` seconds; a url-tar export needs one GET per export.
    ``None`` when the pull already uses url-tar, the limit is off, or the requests alone
    would take less than :data:`SLOW_REQUESTS_S`.
    """
    if export_method == "url-tar" or not 0 < requests_per_second < float("inf"):
        return None
    seconds = n_files / requests_per_second
    if seconds < SLOW_REQUESTS_S:
        return None
    minutes = round(seconds / 60)
    took = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    return (f"{n_files:,} files take at least {took} of file requests at "
            f"{requests_per_second:g} requests/s; --method url-tar --extract fetches one tar "
            "per export instead (what JSOC staff ask of bulk users)")


def _want_live(args: argparse.Namespace) -> bool:
    """Use the live display only on a real terminal, outside CI, unless told not to."""
    if args.no_progress or os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    return sys.stderr.isatty() and (sys.stdout.isatty() or bool(args.json))


# --- sub-commands ------------------------------------------------------------------------


def _cmd_fetch(args: argparse.Namespace) -> int:
    """``asyncjsoc fetch``."""
    sel = _selection(args)
    emails = _emails(args.email)
    if not emails:
        raise UsageError("no notify email given",
                         f"pass --email ADDRESS (an address registered at {REGISTER_URL}) "
                         "or set ASYNCJSOC_EMAILS")
    if args.extract and args.method != "url-tar":
        raise UsageError("--extract unpacks url-tar exports",
                         "add --method url-tar, or leave out --extract")
    server = _server(args)
    queries = _queries(sel)
    state = args.state if args.state is not None else args.out / ".asyncjsoc" / "state.sqlite"
    undo = _Undo(args.out, state)
    try:
        out = _out_dir(args.out)
        config = _client_config(args, server=server, emails=emails)
        return _run(lambda: _fetch(config, queries, out, args))
    except StateLockedError:
        # Another run holds the directory: what did not exist when this one started may be
        # that run's (two started at once), so nothing is removed.
        raise
    except _BAD_INPUT as exc:
        # Bad input found by the server (unknown series, unregistered email...): leave the
        # disk as it was, so a typo does not leave an empty output tree behind.
        undo.undo()
        raise exc from None
    except StateError as exc:
        if _is_other_pull(exc):
            undo.undo()
        else:
            undo.remove_empty()
        raise
    except JsocError:
        # Anything else (an unreachable server...): the state is kept for the rerun to
        # resume from; only directories this run created and left without a file go.
        undo.remove_empty()
        raise


def _is_other_pull(exc: JsocError) -> bool:
    """Whether ``exc`` says the state belongs to a different pull (bad input, exit 2)."""
    return isinstance(exc, StateMismatchError)


class _Undo:
    """What a failed fetch created on disk (the output tree, the state files), to remove it.

    Only paths that did not exist before are removed, and only while they hold nothing but
    asyncjsoc's own state: a downloaded file is never deleted.
    """

    def __init__(self, out: Path, state: Path) -> None:
        self.out_root = _first_missing(out)
        self.state = state
        self.state_root = _first_missing(state.parent)
        self.state_files = [p for p in self._state_paths() if not _exists(p)]

    def _state_paths(self) -> list[Path]:
        """The state database and its companions."""
        from asyncjsoc._store import STATE_FILE_SUFFIXES

        return [self.state.with_name(self.state.name + s) for s in STATE_FILE_SUFFIXES]

    def undo(self) -> None:
        """Remove what was created, best effort."""
        for path in self.state_files:
            with contextlib.suppress(OSError):
                if path.is_file():
                    path.unlink(missing_ok=True)
        for root in (self.state_root, self.out_root):
            with contextlib.suppress(OSError):
                if root is not None and root.is_dir() and _only_state_files(root) is not None:
                    shutil.rmtree(root, ignore_errors=True)

    def remove_empty(self) -> None:
        """Remove the directories that were created and hold nothing, deepest first, best
        effort. Only empty directories are removed (``rmdir``), so a file that appeared in
        one meanwhile keeps it and its parents. A created tree whose only files are state
        locks (the run stopped before it had any state to resume) loses them first."""
        for root in (self.state_root, self.out_root):
            if root is None:
                continue
            locks = _only_state_files(root, locks=True)
            for lock in locks or ():
                with contextlib.suppress(OSError):
                    lock.unlink()
            for dirpath, _dirs, _files in os.walk(root, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


def _exists(path: Path) -> bool:
    """``path.exists()``, false where the name cannot even be looked at (too long...)."""
    try:
        return path.exists()
    except OSError:
        return False


def _first_missing(path: Path) -> Path | None:
    """The outermost ancestor of ``path`` (or itself) that does not exist yet, if any."""
    path = path.absolute()
    try:
        if path.exists():
            return None
    except OSError:  # a name too long to look at: nothing there to undo either
        return None
    top = path
    for parent in path.parents:
        if parent.exists():
            break
        top = parent
    return top


def _only_state_files(root: Path, *, locks: bool = False) -> list[Path] | None:
    """asyncjsoc's state files under ``root`` (only its state locks, with ``locks``) if they
    are the only files there, else ``None``."""
    found: list[Path] = []
    for dirpath, _dirs, files in os.walk(root):
        inside_state = ".asyncjsoc" in Path(dirpath).relative_to(root).parts
        for name in files:
            if not (inside_state and name.startswith("state.sqlite")
                    and (not locks or name.endswith(".lock"))):
                return None
            found.append(Path(dirpath, name))
    return found


def _client_config(args: argparse.Namespace, *, server: str, emails: tuple[str, ...]) -> Any:
    """The engine configuration from the options (unset options keep the engine's default)."""
    from asyncjsoc._config import ClientConfig

    kwargs: dict[str, Any] = {"server": server, "emails": emails}
    ca_bundle = getattr(args, "ca_bundle", None)
    if ca_bundle is not None and not Path(ca_bundle).is_file():
        raise UsageError(f"--ca-bundle {str(ca_bundle)!r} is not a file",
                         "give the PEM file of your site's CA certificates")
    for option, field_name in (
        ("method", "method"),
        ("protocol", "protocol"),
        ("max_files_per_export", "max_files_per_export"),
        ("connections", "connections"),
        ("rate_limit", "requests_per_second"),
        ("state", "state_path"),
        ("ca_bundle", "ca_bundle"),
        ("poll_min", "poll_min"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            kwargs[field_name] = value
    if getattr(args, "no_fsync", False):
        kwargs["fsync"] = False
    if getattr(args, "no_checksums", False):
        kwargs["verify_checksums"] = False
    if getattr(args, "extract", False):
        kwargs["extract_tars"] = True
    if getattr(args, "no_retry_wait", False):
        from asyncjsoc._retry import RetryPolicy

        kwargs["retry"] = RetryPolicy.no_wait()
    return ClientConfig(**kwargs)


class _Display:
    """The reporter for one command: live rich display, or plain log lines on stderr."""

    def __init__(self, *, live: bool, emails: Sequence[str], mask: bool,
                 title: str | None = None,
                 hint: Callable[[Any], str | None] | None = None) -> None:
        from rich.console import Console

        from asyncjsoc._progress import PlainReporter, RichReporter

        self.mask = mask
        self._hint = hint  # given each event; a line it returns is shown once
        self.console = Console(file=sys.stderr, highlight=False)
        self.rich: RichReporter | None = None
        self.plain: PlainReporter | None = None
        if live:
            self.rich = RichReporter(self.console, emails=emails, mask=mask, title=title)
            self.view = self.rich.view
        else:
            self.plain = PlainReporter(sys.stderr, emails=emails, mask=mask)
            if title:
                self.plain.log(title)
            self.view = self.plain.view

    def __call__(self, event: Any, /) -> None:
        """Forward an engine event."""
        if self.rich is not None:
            self.rich(event)
        elif self.plain is not None:
            self.plain(event)
        if self._hint is not None:
            line = self._hint(event)
            if line is not None:
                self._hint = None
                self.note(line)

    def start(self) -> None:
        """Start drawing (live mode)."""
        if self.rich is not None:
            self.rich.start()

    def close(self) -> None:
        """Stop drawing."""
        if self.rich is not None:
            self.rich.close()

    def note(self, text: str) -> None:
        """A human line on stderr outside the live display."""
        if self.plain is not None:
            self.plain.log(text)
        else:
            self.console.print(text, markup=False)


async def _fetch(config: Any, queries: list[Any], out: Path, args: argparse.Namespace,
                 *, title: str | None = None) -> int:
    """Pull every query into ``out`` with a display; print the summary (and JSON)."""
    from asyncjsoc._client import Client
    from asyncjsoc._store import default_state_path
    from asyncjsoc.events import Planned

    def hint(event: Any) -> str | None:
        if not isinstance(event, Planned):
            return None
        text = url_tar_hint(event.plan.n_files, config.export_method,
                            config.requests_per_second)
        return None if text is None else f"hint: {text}"

    mask = not args.debug
    display = _Display(live=_want_live(args), emails=config.emails, mask=mask, title=title,
                       hint=hint)
    display.view.tar_exports = config.export_method == "url-tar"
    display.start()
    results: list[Any] = []
    try:
        async with Client(config, out, reporter=display) as client:
            await _require_usable_email(client)
            for query in queries:
                results.append(await client.fetch(query))
    except anyio.get_cancelled_exc_class():
        display.close()
        state_path = config.state_path or default_state_path(out)
        saved = ("state saved, rerun the same command to resume" if state_path.exists()
                 else "nothing was started yet, rerun the same command")
        display.note(f"interrupted: {display.view.files_done} files done; {saved}")
        if args.json:  # a script reading stdout still gets its one object
            _emit_json({"ok": False, "interrupted": True, "error": "interrupted",
                        "hint": "rerun the same command to resume",
                        "files_done": display.view.files_done}, sys.stdout)
        raise
    finally:
        display.close()
    ok = all(r.ok for r in results)
    _print_summary(display, out)
    unpacked = [f for r in results for f in r.files if f.members]  # by this run
    if unpacked:
        members = sum(len(f.members) for f in unpacked)
        sys.stderr.write(f"unpacked: {members:,} files from {len(unpacked):,} tar file(s), "
                         "which were then deleted\n")
        sys.stderr.flush()
    if args.json:
        # In a thread: listing unpacked files stats each of them.
        doc = await anyio.to_thread.run_sync(
            lambda: _result_json(results, display.view, full_emails=args.debug))
        _emit_json(doc, sys.stdout)
    return EXIT_OK if ok else EXIT_FAILED


async def _extract_all(tars: Sequence[Path], out: Path | None, args: argparse.Namespace,
                       rows: list[dict[str, Any]]) -> bool:
    """Unpack each tar (one line each on stderr); a tar that fails is reported and the
    others still unpacked. Appends the JSON rows to ``rows``; returns whether every tar was
    unpacked."""
    from asyncjsoc._untar import extract_tar

    ok = True
    for tar in tars:
        try:
            done = await extract_tar(tar, out, verify_checksums=not args.no_checksums,
                                     fsync=not args.no_fsync,
                                     remove=bool(getattr(args, "remove", False)))
        except JsocError as exc:
            ok = False
            message = exc.message
            for prefix in (f"{tar}: ", f"{tar.name}: "):
                message = message.removeprefix(prefix)
            _print_error(f"cannot extract {tar}: {message}", exc.hint, debug=args.debug)
            rows.append({"tar": str(tar), "error": exc.message})
            if isinstance(exc, StateLockedError):  # the same for every tar: say it once
                rows += [{"tar": str(t), "error": exc.message} for t in tars[len(rows):]]
                rows[-1]["busy"] = True  # exit 2, as fetch does for a directory in use
                break
            continue
        kept = len(done.files) - done.new
        sys.stderr.write(
            f"extracted {tar.name}: {len(done.files)} files"
            + (f" ({kept} already there)" if kept else "")
            + (", tar removed" if done.removed else "") + "\n")
        rows.append({"tar": str(tar), "files": [str(f) for f in done.files], "new": done.new,
                     "removed": done.removed})
    sys.stderr.flush()
    return ok


def _cmd_extract(args: argparse.Namespace) -> int:
    """``asyncjsoc extract``."""
    out = _out_dir(args.out) if args.out is not None else None

    tars: list[Path] = []
    for given in args.tars:
        if not given.exists():
            raise UsageError(f"no such file or directory: {str(given)!r}",
                             "pass tar files, or the output directory of a url-tar pull")
        if given.is_dir():
            found = sorted(given.glob("*.tar"))
            if not found:
                raise UsageError(f"no .tar file in {str(given)!r}",
                                 "pass tar files, or the output directory of a url-tar pull")
            tars += found
        else:
            tars.append(given)

    async def work() -> int:
        rows: list[dict[str, Any]] = []
        try:
            ok = await _extract_all(tars, out, args, rows)
        except anyio.get_cancelled_exc_class():
            done = sum(1 for r in rows if "files" in r)
            sys.stderr.write(f"interrupted: {done} of {len(tars)} tar(s) unpacked; the files "
                             "out so far are complete, run the same command again to finish\n")
            if args.json:  # a script reading stdout still gets its one object
                _emit_json({"ok": False, "interrupted": True, "error": "interrupted",
                            "extracted": rows}, sys.stdout)
            raise
        busy = any(r.pop("busy", False) for r in rows)
        if args.json:
            _emit_json({"ok": ok, "extracted": rows}, sys.stdout)
        return EXIT_OK if ok else EXIT_USAGE if busy else EXIT_FAILED

    return _run(work)


async def _require_usable_email(client: Any) -> None:
    """Fail before planning (one line, nothing shown) when no notify address is usable.

    The client remembers the registered addresses, so the pulls that follow do not ask
    the JSOC about them again.
    """
    from asyncjsoc._progress import mask_email

    statuses = await client._ask_emails()
    if statuses and not any(s.registered for s in statuses):
        reasons = "; ".join(f"{mask_email(s.email)}: {s.message or 'not registered'}"
                            for s in statuses)
        raise EmailNotRegisteredError(
            f"no usable notify email: {reasons}", email=statuses[0].email,
            status=statuses[0].code,
            hint=f"register the address at {REGISTER_URL} (confirm the reply within 15 "
            "minutes), then try again",
        )


def _result_json(results: Sequence[Any], view: Any, *, full_emails: bool = False,
                 ) -> dict[str, Any]:
    """The ``--json`` document of a fetch: every file on disk, every failure, every export.

    Emails are masked unless ``full_emails`` (``--debug``): the document often ends up in logs.
    """
    from asyncjsoc._progress import mask_email

    files: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    exports: list[dict[str, Any]] = []
    seen: set[str] = set()
    # Tars unpacked by --extract: their files are listed instead (the tars are gone).
    unpacked = {f.relpath: f for r in results for f in r.all_files if f.members}

    def add(relpath: str, size: int, record: str) -> None:
        tar = unpacked.get(relpath)
        if tar is None:
            files.append({"path": relpath, "bytes": size, "record": record})
            return
        base = tar.path.parents[relpath.count("/")]
        for member in tar.members:
            files.append({"path": member.relative_to(base).as_posix(),
                          "bytes": _size(member), "record": record, "tar": relpath})

    for result in results:
        for f in result.files:
            add(f.relpath, f.bytes, f.record)
            seen.add(f.relpath)
        for fail in result.failed:
            failed.append({"record": fail.record, "error": fail.error.message})
        for rid in result.exports:
            row = next((r for r in view.exports.values() if r.request_id == rid), None)
            exports.append({
                "requestid": rid,
                "email": (None if row is None or row.email is None
                          else row.email if full_emails else mask_email(row.email)),
                "status": _STATE_STATUS.get(row.state) if row is not None else None,
            })
    for relpath, (size, record) in view.skipped.items():
        if relpath not in seen:  # complete from an earlier run
            add(relpath, size, record)
    return {"ok": all(r.ok for r in results), "files": files, "failed": failed,
            "exports": exports}


def _size(path: Path) -> int | None:
    """A file's size, or ``None`` if it is gone."""
    try:
        return path.stat().st_size
    except OSError:
        return None


# The JSOC status an export was last seen in, by the display's state name.
_STATE_STATUS = {"ready": 0, "processing": 1, "queued": 2, "submitted": 2, "reused": 2,
                 "failed": 4, "expired": 5}


def _emit_json(doc: dict[str, Any], stream: TextIO) -> None:
    """Write one JSON object and a newline."""
    stream.write(json.dumps(doc) + "\n")
    stream.flush()


def _print_summary(display: _Display, out: Path) -> None:
    """The end-of-pull summary on stderr."""
    from asyncjsoc._progress import render_summary

    render_summary(display.console if display.rich is not None else None, display.view,
                   out_dir=out, stream=sys.stderr, mask=display.mask)


@asynccontextmanager
async def _scratch_client(config: Any, reporter: Any = None) -> AsyncIterator[Any]:
    """A client for plan, check-email and series (``reporter`` gets its events).

    Those never open the state store (only a pull does), so they write nothing and need no
    output directory.
    """
    from asyncjsoc._client import Client

    async with Client(config, Path.cwd(), reporter=reporter) as client:
        yield client


def _cmd_plan(args: argparse.Namespace) -> int:
    """``asyncjsoc plan``."""
    sel = _selection(args)
    server = _server(args)
    queries = _queries(sel)
    config = _client_config(args, server=server, emails=())
    return _run(lambda: _plan(config, queries, args))


async def _plan(config: Any, queries: list[Any], args: argparse.Namespace) -> int:
    """Compute and print the plan of every query."""
    from asyncjsoc._events import Event, PlanCounting
    from asyncjsoc._progress import NO_RECORDS, PlainReporter, format_bytes

    log = PlainReporter(sys.stderr)

    def counting(event: Event) -> None:
        """Long planning (years of data) says how far it got, on stderr, every few seconds."""
        if isinstance(event, PlanCounting):
            log(event)

    plans = []
    try:
        async with _scratch_client(config, counting) as client:
            for query in queries:
                plans.append(await client.plan(query))
    except anyio.get_cancelled_exc_class():
        sys.stderr.write("interrupted: the plan was not finished (nothing was exported)\n")
        if args.json:  # a script reading stdout still gets its one object
            _emit_json({"ok": False, "interrupted": True, "error": "interrupted",
                        "hint": "run the same command again"}, sys.stdout)
        raise
    if args.json:
        _emit_json({"plans": [_plan_json(p) for p in plans]}, sys.stdout)
        return EXIT_OK
    for p in plans:
        if p.n_records == 0:
            size = "nothing to fetch"
        elif p.estimated_bytes is not None:
            size = f"about {format_bytes(p.estimated_bytes)} (estimated from sampled records)"
        else:
            size = "unknown (the server reported no sizes)"
        print(f"series:   {p.series}")
        print(f"records:  {p.n_records}")
        print(f"files:    {p.n_files}")
        print(f"size:     {size}")
        print(f"exports:  {len(p.chunks)}")
        if not p.n_records:
            print(f"note:     {NO_RECORDS}")
        hint = url_tar_hint(p.n_files, config.export_method, config.requests_per_second)
        if hint is not None:
            print(f"hint:     {hint}")
        for c in p.chunks[:20]:
            print(f"  {c.index + 1:>4}  {c.n_records:>7} records {c.n_files:>7} files  "
                  f"{c.recordset}")
        if len(p.chunks) > 20:
            print(f"  ... and {len(p.chunks) - 20} more")
    return EXIT_OK


def _plan_json(plan: Any) -> dict[str, Any]:
    """One plan as JSON."""
    return {
        "series": plan.series,
        "records": plan.n_records,
        "files": plan.n_files,
        "estimated_bytes": plan.estimated_bytes,
        "chunks": [
            {"index": c.index, "recordset": c.recordset, "records": c.n_records,
             "files": c.n_files}
            for c in plan.chunks
        ],
    }


def _cmd_check_email(args: argparse.Namespace) -> int:
    """``asyncjsoc check-email``."""
    emails = _emails(args.emails)
    if not emails:
        raise UsageError("no address given", "e.g. asyncjsoc check-email ADDRESS")
    server = _server(args)
    config = _client_config(args, server=server, emails=emails)
    return _run(lambda: _check_email(config, args))


async def _check_email(config: Any, args: argparse.Namespace) -> int:
    """Ask the server about each address and print one line each."""
    from asyncjsoc._progress import mask_email, mask_emails

    async with _scratch_client(config) as client:
        statuses = await client.check_emails()
    all_ok = all(s.registered for s in statuses)
    def shown(email: str) -> str:
        return email if args.debug else mask_email(email)

    if args.json:
        _emit_json({"ok": all_ok, "emails": [
            {"email": shown(s.email), "registered": s.registered, "code": s.code,
             "message": s.message if args.debug else mask_emails(s.message)}
            for s in statuses]}, sys.stdout)
    else:
        for s in statuses:
            if s.registered:
                print(f"{shown(s.email)}: registered")
            else:
                print(f"{shown(s.email)}: NOT registered ({s.message}); register at "
                      f"{REGISTER_URL}")
    return EXIT_OK if all_ok else EXIT_FAILED


def _cmd_series(args: argparse.Namespace) -> int:
    """``asyncjsoc series``."""
    server = _server(args)
    config = _client_config(args, server=server, emails=())

    async def work() -> int:
        """List the names."""
        async with _scratch_client(config) as client:
            names = await client.api.series_list(args.pattern)
        if args.json:
            sys.stdout.write(json.dumps(names) + "\n")
        else:
            sys.stdout.writelines(f"{name}\n" for name in names)
        if not names:
            what = f"matches {args.pattern!r}" if args.pattern else "is listed"
            sys.stderr.write(f"asyncjsoc: no series {what} on {config.server}\n")
        return EXIT_OK if names else EXIT_FAILED

    return _run(work)


def _cmd_status(args: argparse.Namespace) -> int:
    """``asyncjsoc status``: exit 0 when the pull is complete, 1 when not, 2 when there is no
    readable state to tell (none there, not a state database, or a newer asyncjsoc's), so
    a script never takes a file it cannot read for an unfinished pull."""
    from asyncjsoc._status import read_status
    from asyncjsoc._status_report import status_json, status_text

    try:
        status = read_status(args.out, args.state)
    except StateError as exc:
        raise UsageError(exc.message, exc.hint) from exc
    if args.json:
        _emit_json(status_json(status), sys.stdout)
    else:
        sys.stdout.write(status_text(status, args.out))
        sys.stdout.flush()
    return EXIT_OK if status.complete else EXIT_FAILED


def _cmd_demo(args: argparse.Namespace) -> int:
    """``asyncjsoc demo``."""
    from asyncjsoc import _demo

    setup = _demo.demo_setup(quick=args.quick)
    out = _out_dir(args.out) if args.out else Path(tempfile.mkdtemp(prefix="asyncjsoc-demo-"))

    async def work() -> int:
        """Serve the emulator while the pull runs."""
        from asyncjsoc._config import ClientConfig
        from asyncjsoc._query import Query

        async with _demo.demo_server(setup) as url:
            config = ClientConfig(
                server=url,
                emails=_demo.DEMO_EMAILS,
                max_files_per_export=setup.max_files_per_export,
                poll_min=setup.poll_min,
                requests_per_second=setup.requests_per_second,
                burst=20,
            )
            title = f"asyncjsoc demo: SHARP CEA Bp/Bt/Br from an emulated JSOC at {url}"
            code = await _fetch(config, [Query.from_recordset(setup.recordset)], out, args,
                                title=title)
        sys.stderr.write(f"files are in {out}\n{_demo.real_jsoc_hint(setup)}\n")
        return code

    return _run(work)
