"""Renders the settings documentation (config.example.env, the README table) from
the Settings model, so the documentation cannot drift from the code.

``python -m bot.settings_doc write`` rewrites config.example.env and the table in
README.md (between the settings markers); ``env`` and ``table`` print them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_core import PydanticUndefined

from bot.config import Settings

SECTIONS = {
    "discord_token": "Discord",
    "modelslab_api_key": "ModelsLab",
    "nanobanana_api_key": "Nano Banana Pro",
    "provider_text": "Routing, timeouts and retries",
    "input_max_bytes": "Images",
    "data_dir": "Storage and quotas",
    "log_level": "Operation",
}
REQUIRED_NOTE = {
    "discord_token": "required to run the bot",
    "modelslab_api_key": "at least one provider key is required",
    "nanobanana_api_key": "at least one provider key is required",
}


# Said in config.example.env only, above the setting's line.
ENV_NOTES = {
    "data_dir": "In Docker leave this commented out: the image sets DATA_DIR=/data, its volume.",
    "database_url": "With compose's postgres profile: "
    "postgresql://imagebot:POSTGRES_PASSWORD@postgres:5432/imagebot",
}


def default_text(name: str) -> str:
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is PydanticUndefined or value is None or isinstance(value, SecretStr):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def render_env() -> str:
    """Only what must be set is set; every other setting is shown commented out with
    its default, so that a file passed whole to ``docker run --env-file`` cannot
    override what the image sets (``DATA_DIR=/data``) with the default."""
    lines = [
        "# Copy to .env and fill in what is not commented out. Every other setting the",
        "# bot reads is listed with its default; remove the # of a line to change it.",
    ]
    for name, field in Settings.model_fields.items():
        if name in SECTIONS:
            lines += ["", f"# ===== {SECTIONS[name]} ====="]
        note = f" ({REQUIRED_NOTE[name]})" if name in REQUIRED_NOTE else ""
        lines.append(f"# {field.description}{note}")
        if name in ENV_NOTES:
            lines.append(f"# {ENV_NOTES[name]}")
        hash_ = "" if name in REQUIRED_NOTE else "# "
        lines.append(f"{hash_}{name.upper()}={default_text(name)}")
    return "\n".join(lines) + "\n"


def render_table() -> str:
    rows = ["| Setting | Default | What it is |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = default_text(name)
        shown = f"`{default}`" if default else "(empty)"
        note = f" ({REQUIRED_NOTE[name]})" if name in REQUIRED_NOTE else ""
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {shown} | {description}{note} |")
    return "\n".join(rows) + "\n"


TABLE_START = "<!-- settings:start -->\n"
TABLE_END = "<!-- settings:end -->\n"


def write_files(root: Path) -> None:
    (root / "config.example.env").write_text(render_env(), encoding="utf-8")
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    before, _, rest = text.partition(TABLE_START)
    _, _, after = rest.partition(TABLE_END)
    readme.write_text(before + TABLE_START + render_table() + TABLE_END + after, encoding="utf-8")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "env"
    if what == "write":
        write_files(Path.cwd())
    else:
        sys.stdout.write(render_env() if what == "env" else render_table())
