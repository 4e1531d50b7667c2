"""What ``asyncjsoc status`` prints: a pull's :class:`~asyncjsoc._status.PullStatus` as text
or as a JSON document, with email addresses in stored errors masked."""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asyncjsoc._privacy import mask_emails
from asyncjsoc._progress import format_bytes
from asyncjsoc._status import PullStatus

__all__ = ["status_json", "status_text"]


def _counts(counts: dict[str, int], order: Sequence[str]) -> str:
    """``"3 done, 1 pending"``: the non-zero counts in ``order``."""
    parts = [f"{counts[k]:,} {k}" for k in order if counts.get(k)]
    return ", ".join(parts) or "none"


def _when(timestamp: float) -> str:
    """A POSIX time as UTC, to the minute."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def status_text(status: PullStatus, out: Path) -> str:
    """The human report of ``asyncjsoc status`` (email addresses in errors masked)."""
    lines = [f"pull into {out} (state {status.state_path})"]
    if status.series is None:
        lines.append("  plan      not saved yet: the pull stopped while planning")
    else:
        size = ("" if status.estimated_bytes is None
                else f", about {format_bytes(status.estimated_bytes)}")
        lines.append(f"  plan      {status.series}: {status.n_records:,} records, "
                     f"{status.n_files:,} files{size}")
    chunks = status.chunks
    exports = {"done": chunks.get("done", 0), "ready": chunks.get("ready", 0),
               "to do": chunks.get("planned", 0) + chunks.get("exporting", 0),
               "failed": chunks.get("failed", 0)}
    lines.append(f"  exports   {sum(chunks.values()):,}: "
                 + _counts(exports, ("done", "ready", "to do", "failed")))
    lines.append(f"  files     {_counts(status.files, ('done', 'partial', 'pending', 'failed'))}"
                 f" ({format_bytes(status.bytes_done)} done)")
    if status.unpacked_tars:
        lines.append(f"  unpacked  {status.unpacked_files:,} files from "
                     f"{status.unpacked_tars:,} tar file(s) (--extract)")
    for export in status.staged:
        if export.expires_at is None:
            where = "being prepared at the JSOC"
        elif export.expires_at < time.time():
            where = f"expired at {_when(export.expires_at)} (a rerun requests it again)"
        else:
            where = f"staged, served until {_when(export.expires_at)}"
        lines.append(f"  export {export.chunk_index + 1:<3}{export.request_id}, {where}")
    if status.gone:
        lines.append(f"  gone      {status.gone:,} finished files are no longer on disk as "
                     "recorded (deleted or changed); a rerun fetches them again"
                     + (", for example:" if status.gone > len(status.gone_examples) else ":"))
        lines += [f"            {name}" for name in status.gone_examples]
    if status.files_failed:
        lines.append(f"  failed    {status.files_failed:,} files"
                     + (", for example:" if status.files_failed > len(status.failed) else ":"))
        lines += [f"            {name}: {' '.join(mask_emails(error).split())}"
                  for name, error in status.failed]
    for index, recordset, error in status.failed_exports:
        lines.append(f"  failed    export {index + 1} ({recordset}): "
                     f"{' '.join(mask_emails(error).split())}")
    if status.complete:
        lines.append("  complete  yes")
    elif status.running_pid is not None:
        lines.append(f"  complete  not yet: a run is pulling now (pid {status.running_pid})")
    else:
        lines.append("  complete  no: run the same fetch command again to finish")
    return "\n".join(lines) + "\n"


def status_json(status: PullStatus) -> dict[str, Any]:
    """The ``--json`` document of ``asyncjsoc status`` (email addresses in errors masked)."""
    return {
        "state": str(status.state_path), "complete": status.complete,
        "running_pid": status.running_pid,
        "series": status.series, "records": status.n_records, "files_planned": status.n_files,
        "estimated_bytes": status.estimated_bytes, "exports": status.chunks,
        "files": status.files, "bytes_done": status.bytes_done,
        "unpacked": {"tars": status.unpacked_tars, "files": status.unpacked_files},
        "gone": {"files": status.gone, "examples": list(status.gone_examples)},
        "staged": [{"export": s.chunk_index + 1, "requestid": s.request_id,
                    "expires_at": s.expires_at} for s in status.staged],
        "failed": [{"path": name, "error": mask_emails(error)} for name, error in status.failed],
        "failed_exports": [{"export": index + 1, "recordset": recordset,
                            "error": mask_emails(error)}
                           for index, recordset, error in status.failed_exports],
    }
