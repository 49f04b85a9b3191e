"""Renders the command reference in README.md from the commands themselves: every
slash command and message menu as the bot registers it with Discord, and every
``python -m bot`` command as argparse knows it, so the list cannot drift.

``python -m cogs._reference write`` rewrites README.md between the reference
markers; ``python -m cogs._reference`` prints it. A test keeps the two in sync.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

START = "<!-- commands:start -->\n"
END = "<!-- commands:end -->\n"

_TYPES = {
    3: "text",
    4: "whole number",
    5: "true/false",
    6: "member",
    7: "channel",
    8: "role",
    9: "member or role",
    10: "number",
    11: "image file",
}
_PERMISSIONS = {8: "Administrator", 32: "Manage Server"}


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _option_type(option: dict[str, Any]) -> str:
    kind = _TYPES.get(option["type"], "value")
    if option.get("choices"):
        return f"{kind}: " + ", ".join(f"`{c['name']}`" for c in option["choices"])
    low, high = option.get("min_value"), option.get("max_value")
    if low is not None or high is not None:
        return f"{kind}, {low if low is not None else '…'} to {high if high is not None else '…'}"
    if option.get("max_length") is not None:
        return f"{kind}, up to {option['max_length']} characters"
    if option.get("autocomplete"):
        return f"{kind} (suggestions as you type)"
    return kind


def _slash(command: dict[str, Any], prefix: str = "") -> Iterator[str]:
    name = f"{prefix}{command['name']}"
    options = command.get("options") or []
    nested = [o for o in options if o.get("type") in (1, 2)]
    if nested:
        for sub in nested:
            yield from _slash(sub, f"{name} ")
        return
    yield f"#### `/{name}`\n"
    yield "\n"
    yield f"{_cell(command.get('description', ''))}"
    needs = _PERMISSIONS.get(int(command.get("default_member_permissions") or 0))
    yield f" (shown to members with {needs} unless the server changes it)\n\n" if needs else "\n\n"
    if options:
        yield "| Option | Kind | Required | What it is |\n|---|---|---|---|\n"
        for option in options:
            description = option.get("description", "")
            description = "" if description == "…" else description
            required = "yes" if option.get("required") else "no"
            kind = _cell(_option_type(option))
            yield f"| `{option['name']}` | {kind} | {required} | {_cell(description)} |\n"
        yield "\n"


async def _tree_payloads() -> list[dict[str, Any]]:
    """The commands as the bot would register them, from a bot that never connects."""
    from bot.app import ImageBot, discover_cogs
    from bot.config import Settings
    from bot.datadir import prepare_data_dir
    from bot.jobstore import JobStore
    from bot.quota import open_ledger
    from bot.runtime import open_runtime

    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(
            _env_file=None,
            data_dir=Path(folder),
            discord_token="reference",  # noqa: S106 - a placeholder: this bot never logs in
            modelslab_api_key="reference",
            nanobanana_api_key="reference",
        )
        await asyncio.to_thread(prepare_data_dir, settings)
        async with (
            open_ledger(settings, sweep=False) as ledger,
            open_runtime(settings, ledger) as runtime,
            JobStore.open(settings) as jobs,
        ):
            bot = ImageBot(runtime, jobs)
            for name in discover_cogs():
                await bot.load_extension(name)
            import discord

            kinds = (discord.AppCommandType.chat_input, discord.AppCommandType.message)
            return [
                command.to_dict(bot.tree)
                for kind in kinds
                for command in bot.tree.get_commands(type=kind)
            ]


def render_slash(payloads: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    chat = sorted((p for p in payloads if p.get("type", 1) == 1), key=lambda p: p["name"])
    for command in chat:
        lines += _slash(command)
    menus = sorted(p["name"] for p in payloads if p.get("type") == 3)
    if menus:
        lines.append("#### Message menus\n\nRight-click (or long-press) a message, then *Apps*: ")
        lines.append(", ".join(f"**{name}**" for name in menus) + ".\n\n")
    return "".join(lines)


def _cli_rows(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
            if action.nargs != 0:
                flags += f" `{action.metavar or action.dest.upper()}`"
        else:
            flags = f"`{action.metavar or action.dest.upper()}`"
        what = action.help or ""
        if action.choices is not None:
            what = (what + "; " if what else "") + "one of " + ", ".join(map(str, action.choices))
        if action.required:
            what = (what + " " if what else "") + "(required)"
        elif isinstance(action, argparse._AppendAction) and "repeat" not in what:
            what = (what + " " if what else "") + "(repeatable)"
        yield f"| {flags} | {_cell(what)} |\n"


def _cli(parser: argparse.ArgumentParser, name: str, summary: str = "") -> Iterator[str]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    rows = list(_cli_rows(parser))
    if rows or not subparsers:
        yield f"#### `{name}`\n\n"
        text = parser.description or summary
        if text:
            yield f"{_cell(text[:1].upper() + text[1:])}\n\n"
        if rows:
            yield "| Option | What it is |\n|---|---|\n"
            yield from rows
            yield "\n"
    for action in subparsers:
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for sub_name, sub in action.choices.items():
            yield from _cli(sub, f"{name} {sub_name}", helps.get(sub_name, ""))


def render_cli() -> str:
    from bot.cli import build_parser

    parser = build_parser()
    parser.description = None
    return "".join(_cli(parser, "python -m bot"))


def render() -> str:
    payloads = asyncio.run(_tree_payloads())
    return (
        START
        + "### Slash commands\n\n"
        + render_slash(payloads)
        + "### Shell commands\n\n"
        + render_cli()
        + END
    )


def write(root: Path) -> None:
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    readme.write_text(before + render() + after, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["write"]:
        write(Path.cwd())
    else:
        sys.stdout.write(render())
