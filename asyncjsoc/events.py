"""The events a :class:`~asyncjsoc.Client` sends to its reporter while it works.

A reporter is any callable taking one event (see :class:`Reporter`); match on the event
classes below. All events are frozen dataclasses.
"""

from asyncjsoc._events import (
    Backoff,
    ChunkSplit,
    EmailChecked,
    EmailDropped,
    Event,
    ExportAdopted,
    ExportExpired,
    ExportFailed,
    ExportReady,
    ExportReused,
    ExportSubmitted,
    ExportWaiting,
    FanOutReporter,
    FileDone,
    FileFailed,
    FileProgress,
    FileSkipped,
    FileStarted,
    NullReporter,
    Planned,
    PullFinished,
    Reporter,
    TarUnpacked,
    fan_out,
)

__all__ = [
    "Backoff",
    "ChunkSplit",
    "EmailChecked",
    "EmailDropped",
    "Event",
    "ExportAdopted",
    "ExportExpired",
    "ExportFailed",
    "ExportReady",
    "ExportReused",
    "ExportSubmitted",
    "ExportWaiting",
    "FanOutReporter",
    "FileDone",
    "FileFailed",
    "FileProgress",
    "FileSkipped",
    "FileStarted",
    "NullReporter",
    "Planned",
    "PullFinished",
    "Reporter",
    "TarUnpacked",
    "fan_out",
]
