"""One logging configuration for the service and uvicorn, set at each process's entry point
(`python -m serving`, and each of its workers).

Text by default; one JSON object per line with `log_json` (for Kubernetes collectors). Records
that concern a model carry `model` and `version`. Either way a record is one line whatever a
client sent (JSON escapes control characters; the text format escapes them too).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

CONTEXT = ("model", "version")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTROLS = {
    code: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(chr(code), f"\\x{code:02x}")
    for code in [*range(0x20), *range(0x7F, 0xA0)]
} | {0x2028: "\\u2028", 0x2029: "\\u2029"}
"""Control characters (and Unicode's line separators) as escapes: a client's `%0A` in a
path or a model name must not start a line of its own in the log."""


def escaped(text: str) -> str:
    """`text` with its control characters escaped (printable text is returned as it is)."""
    return text if text.isprintable() else text.translate(CONTROLS)


class TextFormatter(logging.Formatter):
    """The text format, one line per record whatever a message holds: the message is escaped
    (`escaped`), and a traceback's lines, which are ours, keep their line breaks but lose any
    other control character (a carriage return, a terminal escape)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return escaped(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return "\n".join(map(escaped, super().formatException(ei).split("\n")))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "\n".join(map(escaped, super().formatStack(stack_info).split("\n")))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: getattr(record, key) for key in CONTEXT if hasattr(record, key)})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str, json: bool, access_log: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = name != "uvicorn.access" or access_log
