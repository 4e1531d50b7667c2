"""asyncjsoc: fast, polite, resumable bulk downloads from the Stanford JSOC."""

from asyncjsoc import exceptions
from asyncjsoc._models import (
    Chunk,
    EmailStatus,
    ExportFile,
    ExportStatus,
    Plan,
    RemoteFile,
    SeriesInfo,
)

__version__ = "0.1.0"

__all__ = [
    "Chunk",
    "EmailStatus",
    "ExportFile",
    "ExportStatus",
    "Plan",
    "RemoteFile",
    "SeriesInfo",
    "__version__",
    "exceptions",
]
