"""Logging setup (logfmt or JSON lines on stderr) and the one-line-per-failed-probe log sink."""

from __future__ import annotations

import json
import logging
import sys
import time

from monitor.result import Result

__all__ = ["log_result", "setup_logging"]

log = logging.getLogger("mailmon.probe")


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "._-:/@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        line = " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str)


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aioimaplib logs every line it sends and receives at DEBUG: message content has no place in our logs.
    logging.getLogger("aioimaplib").setLevel(logging.WARNING)


def log_result(result: Result) -> None:
    """Log a failed probe in one line; successes are metrics, not log noise."""
    if result.ok:
        log.debug("check ok", extra={"fields": {"target": result.target, "check": result.check,
                                                "duration_seconds": round(result.duration_seconds, 4)}})
        return
    log.warning("check failed", extra={"fields": {
        "vantage": result.vantage, "target": result.target, "check": result.check, "via": result.via,
        "stage": result.stage, "reason": result.reason, "smtp_code": result.smtp_code,
        "duration_seconds": round(result.duration_seconds, 4), "detail": result.detail,
    }})
