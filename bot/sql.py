"""SQL text written once for both backends."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (no ``?`` in our literals)."""
    parts = sql.split("?")
    return "".join(part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, 1))


def sqlite_database_id(resolved_path: Path) -> str:
    """Names a database so that two stores can tell they share it (``JournalStep``)."""
    return f"sqlite:{resolved_path}"


def postgres_database_id(url: str) -> str:
    """As ``sqlite_database_id``; without the password, so it is safe to show."""
    parts = urlsplit(url)
    host = f"{parts.hostname or ''}:{parts.port or 5432}"
    return f"postgresql://{parts.username or ''}@{host}{parts.path}"
