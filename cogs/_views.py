"""Result buttons that survive restarts, and the prompt modals.

A button's custom id is ``ib:<action>:<job id>:<n>``; the job's parameters are
in the job store, so any process that sees the click can act on it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import discord

CUSTOM_ID = re.compile(
    r"ib:(?P<action>reroll|up|var|edit|del|info|cancel):(?P<job>[0-9a-f]{32}):(?P<n>[0-9])"
)

GENERATION_COG = "Generation"


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=CUSTOM_ID,
):
    def __init__(
        self,
        action: str,
        job_id: str,
        n: int = 0,
        *,
        label: str = "",
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        row: int | None = None,
        emoji: str | None = None,
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label=label or None,
                style=style,
                custom_id=f"ib:{action}:{job_id}:{n}",
                row=row,
                emoji=emoji,
            )
        )
        self.action = action
        self.job_id = job_id
        self.n = n

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> JobButton:
        return cls(match["action"], match["job"], int(match["n"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog(GENERATION_COG)
        if cog is None:
            await interaction.response.send_message(
                "The bot is starting up; try again in a moment.", ephemeral=True
            )
            return
        await cog.handle_button(interaction, self.action, self.job_id, self.n)


def result_view(
    job_id: str, count: int, *, can_vary: bool, can_delete: bool = True
) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for n in range(1, count + 1):
        view.add_item(JobButton("up", job_id, n, label=f"U{n}", row=0))
    if can_vary:
        for n in range(1, count + 1):
            view.add_item(JobButton("var", job_id, n, label=f"V{n}", row=1))
    view.add_item(
        JobButton(
            "reroll", job_id, label="Re-roll", emoji="🔁", style=discord.ButtonStyle.primary, row=2
        )
    )
    if can_vary:
        view.add_item(JobButton("edit", job_id, label="Edit", emoji="✏️", row=2))
    view.add_item(JobButton("info", job_id, label="Info", emoji="ℹ️", row=2))
    if can_delete:  # a private result is dismissed, not deleted
        view.add_item(
            JobButton(
                "del", job_id, label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger, row=2
            )
        )
    return view


def progress_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("cancel", job_id, label="Cancel", emoji="✖️"))
    return view


class PromptModal(discord.ui.Modal):
    """Asks for a prompt (and optionally which image); the submit callback does the work.

    discord.py finds an open modal by its custom id alone, so every modal gets
    its own: with a shared one, a second member's modal replaced the first's,
    the first member's prompt then ran on the second member's image, and the
    first modal's timeout closed the second's.
    """

    TIMEOUT = 600.0  # seconds a member may take to type; Discord sends nothing on close

    def __init__(
        self,
        *,
        title: str,
        on_submit: Callable[[discord.Interaction[Any], str, int], Awaitable[None]],
        owner_id: int,
        target: str,
        ask_image: int = 0,
        default_prompt: str | None = None,
    ) -> None:
        # The nonce keeps two modals of one member on one target apart too.
        custom_id = f"ib:prompt:{owner_id}:{target}:{secrets.token_hex(4)}"
        super().__init__(title=title, timeout=self.TIMEOUT, custom_id=custom_id)
        self.owner_id = owner_id
        self._on_submit = on_submit
        self.prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label="Prompt",
            style=discord.TextStyle.paragraph,
            max_length=2000,
            default=default_prompt,
            custom_id="prompt",
        )
        self.add_item(self.prompt)
        self.image: discord.ui.TextInput[Any] | None = None
        if ask_image > 1:
            self.image = discord.ui.TextInput(
                label=f"Which image (1-{ask_image})",
                default="1",
                max_length=1,
                custom_id="image",
            )
            self.add_item(self.image)

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        # Discord routes a submission only to the member who opened the modal;
        # this holds even if a custom id were ever guessed or replayed.
        if interaction.user.id == self.owner_id:
            return True
        await interaction.response.send_message(
            "This form was opened by someone else.", ephemeral=True
        )
        return False

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        n = 1
        if self.image is not None:
            n = int(self.image.value) if self.image.value.isdigit() else 0
        await self._on_submit(interaction, self.prompt.value, n)

    # Same two-argument form as discord.py's own Modal.on_error, which narrows BaseView's.
    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[Any], error: Exception, /
    ) -> None:
        from bot.app import report_error

        await report_error(interaction, error)
