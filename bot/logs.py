"""Logging set-up with a last line of defence against leaked secrets."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
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
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secret_values(settings)))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # discord.py's own DEBUG output includes gateway payloads; keep it at INFO.
    logging.getLogger("discord").setLevel(max(logging.INFO, root.level))
