"""Logging set-up: text or JSON lines, the job id on every line about a job, and
a last line of defence against leaked secrets."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from bot.config import Settings

REDACTED = "[redacted]"


class RedactingFilter(logging.Filter):
    """Replaces known secret values in every record before any handler sees it.

    Code never logs secrets on purpose; this catches the accident (a provider
    echoing a request body in an error, an exception message with a URL).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Short values would redact ordinary words; real keys are long.
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        text = record.exc_text or ""
        for secret in self._secrets:
            message = message.replace(secret, REDACTED)
            text = text.replace(secret, REDACTED)
        record.msg, record.args = message, None
        if record.exc_text:
            record.exc_text = text
        return True


# The job the running task works on. Each job runs in a task of its own, and
# tasks copy the context they start in, so the id follows the job into the
# tasks it starts (downloads, progress edits) and no further.
_current_job: ContextVar[str | None] = ContextVar("job_id", default=None)


def bind_job(job_id: str) -> None:
    """Mark every log line of the current task (and the tasks it starts) as about ``job_id``."""
    _current_job.set(job_id)


def current_job() -> str | None:
    return _current_job.get()


class JobFilter(logging.Filter):
    """Adds ``job_id`` (None outside a job) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = _current_job.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (Loki, Elasticsearch, CloudWatch).

    Keys: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and when
    present ``job_id``, ``exception`` (the traceback) and ``stack``.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # already redacted by RedactingFilter
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The human format, with ``[job …]`` after the logger name on a job's lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(job)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        record.job = f" [job {job_id}]" if job_id else ""
        return super().format(record)


def secret_values(settings: Settings) -> list[str]:
    values = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr) and value.get_secret_value():
            values.append(value.get_secret_value())
    # DATABASE_URL is not a secret as a whole, but its password is.
    if settings.database_url:
        password = urlsplit(settings.database_url).password
        if password:
            values.append(unquote(password))
    return values


def setup_logging(settings: Settings, *, stream: object = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(JobFilter())
    handler.addFilter(RedactingFilter(secret_values(settings)))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # discord.py's own DEBUG output includes gateway payloads; keep it at INFO.
    logging.getLogger("discord").setLevel(max(logging.INFO, root.level))
    # libvips reports every finished thread pool at INFO ("threadpool completed with
    # 1 workers"): noise between an operator's lines, and nothing to act on.
    logging.getLogger("pyvips").setLevel(max(logging.WARNING, root.level))
