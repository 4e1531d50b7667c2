"""The ``asyncjsoc`` command line's argument parser: sub-commands, options, help texts.

:mod:`asyncjsoc.cli` runs the commands; this module only describes them. The exit codes live
here because the parser's epilog documents them (and its errors exit with ``EXIT_USAGE``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

__all__ = [
    "DEFAULT_SERVER",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "Handler",
    "build_command_parser",
    "positive_float",
    "positive_int",
]

DEFAULT_SERVER = "http://jsoc.stanford.edu"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

Handler = Callable[[argparse.Namespace], int]
"""Runs one sub-command with the parsed arguments; returns the exit code."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line plus a pointer to ``--help``."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line and exit with status 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_selection(p: argparse.ArgumentParser) -> None:
    """What to download: record sets, a job file, or a query built from options."""
    g = p.add_argument_group(
        "selection",
        "give RECORDSET..., or --jobs FILE, or --series with --start/--end (not a mix)",
    )
    g.add_argument(
        "recordsets",
        nargs="*",
        metavar="RECORDSET",
        help="DRMS record sets, e.g. 'hmi.sharp_cea_720s[7302][2018.09.30_00:00_TAI/1d]{Br}'",
    )
    g.add_argument("--jobs", type=Path, metavar="FILE",
                   help="job file: one 'HARPNUM.YYYYMMDD_HHMMSS_TAI' per line, # comments")
    g.add_argument("--series", metavar="NAME",
                   help="series for --jobs (default hmi.sharp_cea_720s) or a built query")
    g.add_argument("--segments", metavar="SEG,SEG",
                   help="segments to fetch, comma-separated (e.g. Bp,Bt,Br); default all")
    g.add_argument("--start", metavar="T", help="start time (e.g. 2018.09.30_00:00_TAI)")
    g.add_argument("--end", metavar="T", help="end time, inclusive")
    g.add_argument("--cadence", metavar="DT", help="sampling cadence, e.g. 96m, 12s, 1h")
    g.add_argument("--primekey", action="append", default=[], metavar="KEY=VALUE",
                   help="restrict a prime key, e.g. HARPNUM=7302 or HARPNUM=7300-7310 "
                   "(repeatable)")
    g.add_argument("--where", action="append", default=[], metavar="EXPR",
                   help="keyword filter, e.g. 'LON_MIN>-70' (becomes [? ... ?]; repeat to AND)")


def _add_server(p: argparse.ArgumentParser, *, emails: bool = True) -> None:
    """How to reach the JSOC."""
    g = p.add_argument_group("server")
    g.add_argument("--server", metavar="URL",
                   help=f"JSOC base URL (default $ASYNCJSOC_SERVER or {DEFAULT_SERVER})")
    if emails:
        g.add_argument("--email", action="append", default=[], metavar="E",
                       help="registered notify address; repeat for one export slot per "
                       "address (default: $ASYNCJSOC_EMAILS, comma-separated)")
    g.add_argument("--ca-bundle", type=Path, metavar="PATH",
                   help="PEM file of the CA certificates to trust for HTTPS, instead of "
                   "the system's")
    g.add_argument("--connections", type=positive_int, metavar="N",
                   help="concurrent file downloads (default 2; the JSOC asks for few)")
    g.add_argument("--rate-limit", type=positive_float, metavar="R",
                   help="HTTP requests per second, all kinds (default 5)")
    g.add_argument("--debug", action="store_true",
                   help="show full emails, tracebacks and every detail")
    # For tests: poll faster than is polite, and retry without waiting.
    g.add_argument("--poll-min", type=positive_float, help=argparse.SUPPRESS)
    g.add_argument("--no-retry-wait", action="store_true", help=argparse.SUPPRESS)


def _add_export(p: argparse.ArgumentParser) -> None:
    """How the JSOC should package the export."""
    g = p.add_argument_group("export")
    g.add_argument("--method", choices=("url", "url_quick", "url-tar"), default="url",
                   help="url: one file per segment (default); url-tar: one tar per export")
    g.add_argument("--protocol", choices=("fits", "as-is"), default="fits",
                   help="fits: keywords in the FITS headers (default); as-is: stored files")
    g.add_argument("--max-files-per-export", type=positive_int, metavar="N",
                   help="split into exports of at most N files (default per series)")


def _version_line() -> str:
    """``asyncjsoc X.Y.Z (aiohttp A.B.C, Python P.Q.R)``, what a bug report needs.

    aiohttp's version comes from its installed metadata: importing it here would slow down
    every command's start-up, ``--help`` included.
    """
    import importlib.metadata
    import platform

    from asyncjsoc import __version__

    try:
        aiohttp_version = importlib.metadata.version("aiohttp")
    except importlib.metadata.PackageNotFoundError:
        aiohttp_version = "unknown"
    return (f"asyncjsoc {__version__} (aiohttp {aiohttp_version}, "
            f"Python {platform.python_version()})")


def build_command_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per job.

    Parameters
    ----------
    handlers
        Sub-command name -> the function that runs it (stored as ``handler`` in the parsed
        namespace); every sub-command but ``emulator``, which brings its own.
    """
    parser = _Parser(
        prog="asyncjsoc",
        description="Bulk, resumable downloads from the Stanford JSOC.",
        epilog="exit codes: 0 all files on disk and verified, 1 some failed, 2 bad input, "
        "130 interrupted (rerun resumes), 143 terminated",
    )
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fetch = sub.add_parser("fetch", help="download the files of a query",
                           description="Export and download; rerun to resume.")
    _add_selection(fetch)
    fetch.add_argument("--out", type=directory, required=True, metavar="DIR",
                       help="directory the files go into (created if missing)")
    _add_server(fetch)
    _add_export(fetch)
    g = fetch.add_argument_group("output")
    g.add_argument("--state", type=state_file, metavar="PATH",
                   help="state file that makes the pull resumable "
                   "(default DIR/.asyncjsoc/state.sqlite)")
    g.add_argument("--no-checksums", action="store_true",
                   help="do not check FITS CHECKSUM/DATASUM (sizes are still checked); "
                   "saves about 0.7 CPU seconds per GB")
    g.add_argument("--no-fsync", action="store_true",
                   help="do not fsync files (faster on slow or network file systems; a "
                   "power loss may then lose recently finished files)")
    g.add_argument("--no-progress", action="store_true",
                   help="plain log lines on stderr instead of the live display")
    g.add_argument("--extract", action="store_true",
                   help="with --method url-tar: unpack each export's tar into DIR as soon as "
                   "it arrives (names checked, FITS checksums verified), then delete it")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object with the result on stdout")
    fetch.set_defaults(handler=handlers["fetch"])

    plan = sub.add_parser("plan", help="show how a query would be split; exports nothing",
                          description="Count records and files and split into exports.")
    _add_selection(plan)
    _add_server(plan, emails=False)
    _add_export(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=handlers["plan"])

    check = sub.add_parser("check-email", help="is an address registered for JSOC exports?",
                           description="Exit 0 only if every address is registered.")
    check.add_argument("emails", nargs="*", metavar="E",
                       help="addresses to check (default: $ASYNCJSOC_EMAILS)")
    _add_server(check, emails=False)
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=handlers["check-email"])

    series = sub.add_parser("series", help="list the series the server offers",
                            description="Names of the series matching a regular expression.")
    series.add_argument("pattern", nargs="?", metavar="REGEX",
                        help="regular expression matched against series names, e.g. '^hmi.sharp'")
    _add_server(series, emails=False)
    series.add_argument("--json", action="store_true", help="print the names as a JSON list")
    series.set_defaults(handler=handlers["series"])

    extract = sub.add_parser(
        "extract", help="unpack url-tar export tars, safely",
        description="Unpack tar files of url-tar exports: member names that would land "
        "outside the output directory, links and devices are refused; each FITS file is "
        "checked against its CHECKSUM/DATASUM and made durable before it gets its name. "
        "Files already unpacked by an earlier run are kept, so running it again after an "
        "interruption finishes the job.")
    extract.add_argument("tars", nargs="+", type=Path, metavar="TAR",
                         help="tar files (REQUESTID.tar in a pull's output directory), or "
                         "directories: every *.tar in each")
    extract.add_argument("--out", type=directory, metavar="DIR",
                         help="where the files go (default: the directory of each tar)")
    extract.add_argument("--remove", action="store_true",
                         help="delete each tar once its files are on disk (a rerun of its "
                         "pull would fetch it again; fetch --extract records what it unpacks)")
    extract.add_argument("--no-checksums", action="store_true",
                         help="do not check FITS CHECKSUM/DATASUM")
    extract.add_argument("--no-fsync", action="store_true", help="do not fsync files")
    extract.add_argument("--json", action="store_true",
                         help="print one JSON object with the result on stdout")
    extract.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    extract.set_defaults(handler=handlers["extract"])

    status = sub.add_parser(
        "status", help="where a pull stands (reads its state; safe while it runs)",
        description="Counts of exports and files by state, bytes done, staged exports and "
        "failed files, from the state store of a pull's output directory. Reads only: "
        "safe to run while the pull is running. Exit 0 when the pull is complete, 1 when "
        "not, 2 when DIR holds no pull's state it can read.")
    status.add_argument("out", type=Path, metavar="DIR", help="the --out directory of a fetch")
    status.add_argument("--state", type=state_file, metavar="PATH",
                        help="the fetch's --state file, if it had one")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=handlers["status"])

    demo = sub.add_parser("demo", help="a complete bulk pull from a built-in JSOC emulator",
                          description="Starts the emulator in this process and pulls SHARP "
                          "CEA vector fields for several HARPs, with the progress display.")
    demo.add_argument("--out", type=directory, metavar="DIR",
                      help="where the files go (default: a temporary directory)")
    demo.add_argument("--no-progress", action="store_true",
                      help="plain log lines instead of the live display")
    demo.add_argument("--json", action="store_true",
                      help="print one JSON object with the result on stdout")
    demo.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    demo.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    demo.set_defaults(handler=handlers["demo"])

    from asyncjsoc.emulator import _cli as emulator_cli

    emulator_cli.add_parser(sub)
    return parser


def directory(text: str) -> Path:
    """argparse type: a directory path, not empty (``''`` would quietly mean ``.``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a directory (. for this one)")
    return Path(text)


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def state_file(text: str) -> Path:
    """argparse type: the path of a state file (not empty, not a directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs the path of a file, e.g. DIR/state.sqlite")
    path = Path(text)
    if text.endswith("/") or path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a directory; give the path of a file in it, e.g. "
            f"{(path / 'state.sqlite').as_posix()}")
    return path


def positive_float(text: str) -> float:
    """argparse type: a positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value
