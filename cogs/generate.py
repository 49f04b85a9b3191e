"""/imagine, /edit, /blend, the "Edit image"/"Blend images" menus and result buttons.

Thin by design: options become a GenerationRequest; GenerationService runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import Choice, Range
from discord.ext import commands

from bot.app import refuse_privately
from bot.errors import BotError, UserError
from bot.models import GenerationRequest, Mode
from bot.providers.base import ASPECT_RATIOS
from bot.providers.modelslab import INFERENCE_STEPS, SCHEDULERS
from cogs._service import GenerationService
from cogs._views import GENERATION_COG, JobButton, PromptModal

if TYPE_CHECKING:
    from bot.app import ImageBot

ASPECT_CHOICES = [Choice(name=ratio, value=ratio) for ratio in ASPECT_RATIOS]
STEPS_CHOICES = [Choice(name=steps, value=steps) for steps in INFERENCE_STEPS]
SEED_MAX = 4_294_967_295
MODES = {"imagine": Mode.TEXT, "edit": Mode.EDIT, "blend": Mode.BLEND}


def _mode_of(interaction: discord.Interaction[Any]) -> Mode:
    return MODES.get(interaction.command.name if interaction.command else "", Mode.TEXT)


def _advanced(
    steps: str | None, guidance: float | None, scheduler: str | None, enhance: bool | None
) -> dict[str, Any]:
    """ModelsLab's advanced options by their API names; unset ones are left out."""
    options: dict[str, Any] = {}
    if steps is not None:
        options["num_inference_steps"] = steps
    if guidance is not None:
        options["guidance_scale"] = guidance
    if scheduler is not None:
        options["scheduler"] = scheduler
    if enhance is not None:
        options["enhance_prompt"] = "yes" if enhance else "no"
    return options


class Generation(commands.Cog, name=GENERATION_COG):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self.service = GenerationService(bot)
        self._menus = [
            app_commands.ContextMenu(name="Edit image", callback=self.edit_menu),
            app_commands.ContextMenu(name="Blend images", callback=self.blend_menu),
        ]

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(JobButton)
        for menu in self._menus:
            self.bot.tree.add_command(menu)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(JobButton)
        for menu in self._menus:
            self.bot.tree.remove_command(menu.name, type=menu.type)

    # --- autocomplete from provider capabilities ------------------------------
    async def provider_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[Choice[str]]:
        mode = _mode_of(interaction)
        return [
            Choice(name=name, value=name)
            for name, provider in self.bot.runtime.providers.items()
            if provider.capabilities.supports(mode) and current.lower() in name
        ][:25]

    async def model_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[Choice[str]]:
        models = {
            model for p in self.bot.runtime.providers.values() for model in p.capabilities.models
        }
        return [Choice(name=m, value=m) for m in sorted(models) if current.lower() in m.lower()][
            :25
        ]

    async def size_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[Choice[str]]:
        """The sizes of the provider this command would use (the one typed in its
        provider option, else the default for the mode), with their price."""
        mode = _mode_of(interaction)
        pipeline = self.bot.runtime.pipeline
        chosen = getattr(interaction.namespace, "provider", None)
        try:
            provider = pipeline.choose_provider(
                GenerationRequest(mode=mode, prompt="", provider=chosen or None)
            )
        except BotError:
            return []
        choices = []
        for size in provider.capabilities.sizes_for(mode):
            if current.strip().lower() not in size:
                continue
            probe = GenerationRequest(mode=mode, prompt="", size=size)
            cost = pipeline.price(provider, probe)
            unit = "credit" if cost == 1 else "credits"
            choices.append(Choice(name=f"{size} · {cost} {unit} per image", value=size))
        return choices

    async def style_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[Choice[str]]:
        styles = await self.bot.styles.list(str(interaction.guild_id))
        wanted = current.strip().lower()
        return [
            Choice(name=f"{style.name} · {style.summary()}"[:100], value=style.name)
            for style in styles
            if wanted in style.name
        ][:25]

    async def scheduler_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[Choice[str]]:
        wanted = current.strip().lower()
        return [Choice(name=s, value=s) for s in SCHEDULERS if wanted in s.lower()][:25]

    # --- slash commands --------------------------------------------------------
    @app_commands.command(name="imagine", description="Make images from a text prompt")
    @app_commands.describe(
        prompt="What to draw",
        negative_prompt="What to leave out",
        aspect_ratio="Shape of the image",
        samples="How many images (1-4)",
        seed="A number to repeat a result; empty for random",
        provider="Which image service to use",
        model="Which model to use (ModelsLab)",
        size="Resolution: 1k, 2k or 4k where the service offers it",
        style="A saved look: prompt template and defaults (/style list)",
        steps="Denoising steps (ModelsLab)",
        guidance="How closely to follow the prompt, 1-20 (ModelsLab)",
        scheduler="Sampling scheduler (ModelsLab)",
        enhance_prompt="Let ModelsLab improve the prompt (its default: yes)",
    )
    @app_commands.choices(aspect_ratio=ASPECT_CHOICES, steps=STEPS_CHOICES)
    @app_commands.autocomplete(
        provider=provider_autocomplete,
        model=model_autocomplete,
        size=size_autocomplete,
        style=style_autocomplete,
        scheduler=scheduler_autocomplete,
    )
    @app_commands.guild_only()
    async def imagine(
        self,
        interaction: discord.Interaction[ImageBot],
        prompt: Range[str, 1, 2000],
        negative_prompt: Range[str, 1, 1000] | None = None,
        aspect_ratio: str | None = None,
        samples: Range[int, 1, 4] = 1,
        seed: Range[int, 0, SEED_MAX] | None = None,
        provider: str | None = None,
        model: str | None = None,
        size: str | None = None,
        style: str | None = None,
        steps: str | None = None,
        guidance: Range[float, 1.0, 20.0] | None = None,
        scheduler: str | None = None,
        enhance_prompt: bool | None = None,
    ) -> None:
        request = GenerationRequest(
            mode=Mode.TEXT,
            prompt=prompt,
            negative_prompt=negative_prompt,
            aspect_ratio=aspect_ratio,
            samples=samples,
            seed=seed,
            provider=provider,
            model=model,
            size=size,
            options=_advanced(steps, guidance, scheduler, enhance_prompt),
        )
        await self.service.start(interaction, request, style=style)

    @app_commands.command(name="edit", description="Change an image with a prompt")
    @app_commands.describe(
        image="The image to change (PNG, JPEG, WebP or GIF)",
        prompt="What to change",
        negative_prompt="What to leave out",
        aspect_ratio="Shape of the result",
        samples="How many images (1-4)",
        seed="A number to repeat a result; empty for random",
        provider="Which image service to use",
        size="Resolution: 1k, 2k or 4k where the service offers it",
        style="A saved look: prompt template and defaults (/style list)",
    )
    @app_commands.choices(aspect_ratio=ASPECT_CHOICES)
    @app_commands.autocomplete(
        provider=provider_autocomplete, size=size_autocomplete, style=style_autocomplete
    )
    @app_commands.guild_only()
    async def edit(
        self,
        interaction: discord.Interaction[ImageBot],
        image: discord.Attachment,
        prompt: Range[str, 1, 2000],
        negative_prompt: Range[str, 1, 1000] | None = None,
        aspect_ratio: str | None = None,
        samples: Range[int, 1, 4] = 1,
        seed: Range[int, 0, SEED_MAX] | None = None,
        provider: str | None = None,
        size: str | None = None,
        style: str | None = None,
    ) -> None:
        request = GenerationRequest(
            mode=Mode.EDIT,
            prompt=prompt,
            negative_prompt=negative_prompt,
            aspect_ratio=aspect_ratio,
            samples=samples,
            seed=seed,
            provider=provider,
            size=size,
        )
        await self.service.start(interaction, request, [image], style=style)

    @app_commands.command(name="blend", description="Combine several images with a prompt")
    @app_commands.describe(
        image1="First image",
        image2="Second image",
        prompt="How to combine them",
        image3="Another image",
        image4="Another image",
        image5="Another image",
        image6="Another image",
        aspect_ratio="Shape of the result",
        samples="How many images (1-4)",
        seed="A number to repeat a result; empty for random",
        provider="Which image service to use",
        negative_prompt="What to leave out",
        size="Resolution: 1k, 2k or 4k where the service offers it",
        style="A saved look: prompt template and defaults (/style list)",
    )
    @app_commands.choices(aspect_ratio=ASPECT_CHOICES)
    @app_commands.autocomplete(
        provider=provider_autocomplete, size=size_autocomplete, style=style_autocomplete
    )
    @app_commands.guild_only()
    async def blend(
        self,
        interaction: discord.Interaction[ImageBot],
        image1: discord.Attachment,
        image2: discord.Attachment,
        prompt: Range[str, 1, 2000],
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        image5: discord.Attachment | None = None,
        image6: discord.Attachment | None = None,
        aspect_ratio: str | None = None,
        samples: Range[int, 1, 4] = 1,
        seed: Range[int, 0, SEED_MAX] | None = None,
        provider: str | None = None,
        negative_prompt: Range[str, 1, 1000] | None = None,
        size: str | None = None,
        style: str | None = None,
    ) -> None:
        images = [a for a in (image1, image2, image3, image4, image5, image6) if a is not None]
        request = GenerationRequest(
            mode=Mode.BLEND,
            prompt=prompt,
            negative_prompt=negative_prompt,
            aspect_ratio=aspect_ratio,
            samples=samples,
            seed=seed,
            provider=provider,
            size=size,
        )
        await self.service.start(interaction, request, images, style=style)

    # --- context menus -----------------------------------------------------------
    @app_commands.guild_only()
    async def edit_menu(
        self, interaction: discord.Interaction[ImageBot], message: discord.Message
    ) -> None:
        images = _image_attachments(message)
        if not images:
            raise UserError("That message has no image attached.")

        async def submit(modal_interaction: discord.Interaction[Any], prompt: str, _: int) -> None:
            request = GenerationRequest(mode=Mode.EDIT, prompt=prompt)
            await self.service.start(modal_interaction, request, images[:1])

        if not await self.service.may_open_form(interaction):
            return
        await interaction.response.send_modal(
            PromptModal(
                title="Edit image",
                on_submit=submit,
                owner_id=interaction.user.id,
                target=str(message.id),
            )
        )

    @app_commands.guild_only()
    async def blend_menu(
        self, interaction: discord.Interaction[ImageBot], message: discord.Message
    ) -> None:
        images = _image_attachments(message)
        if len(images) < 2:
            raise UserError("Blending needs a message with at least two images attached.")

        async def submit(modal_interaction: discord.Interaction[Any], prompt: str, _: int) -> None:
            request = GenerationRequest(mode=Mode.BLEND, prompt=prompt)
            await self.service.start(modal_interaction, request, images)

        if not await self.service.may_open_form(interaction):
            return
        await interaction.response.send_modal(
            PromptModal(
                title="Blend images",
                on_submit=submit,
                owner_id=interaction.user.id,
                target=str(message.id),
            )
        )

    # --- result buttons ----------------------------------------------------------
    async def handle_button(
        self, interaction: discord.Interaction[ImageBot], action: str, job_id: str, n: int
    ) -> None:
        try:
            await self._handle_button(interaction, action, job_id, n)
        except UserError as error:
            await refuse_privately(interaction, error.user_message)

    async def _handle_button(
        self, interaction: discord.Interaction[ImageBot], action: str, job_id: str, n: int
    ) -> None:
        if action == "reroll":
            await self.service.reroll(interaction, job_id)
        elif action == "up":
            await self.service.upscale_pick(interaction, job_id, n)
        elif action == "var":
            await self.service.vary(interaction, job_id, n)
        elif action == "del":
            await self.service.delete(interaction, job_id)
        elif action == "cancel":
            await self.service.cancel(interaction, job_id)
        elif action == "info":
            await self.service.info(interaction, job_id)
        elif action == "edit":
            record = await self.service.checked_record(interaction, job_id)
            if record is None:
                return

            async def submit(
                modal_interaction: discord.Interaction[Any], prompt: str, image: int
            ) -> None:
                if not 1 <= image <= len(record.images):
                    await refuse_privately(
                        modal_interaction, f"Pick an image from 1 to {len(record.images)}."
                    )
                    return
                await self.service.vary(modal_interaction, job_id, image, prompt=prompt)

            await interaction.response.send_modal(
                PromptModal(
                    title="Edit this result",
                    on_submit=submit,
                    owner_id=interaction.user.id,
                    target=job_id,
                    ask_image=len(record.images),
                    default_prompt=record.request.prompt[:2000],
                )
            )


def _image_attachments(message: discord.Message) -> list[discord.Attachment]:
    return [
        a
        for a in message.attachments
        if (a.content_type or "").split(";")[0]
        in ("image/png", "image/jpeg", "image/webp", "image/gif")
        or a.filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".gif"))
    ]


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Generation(bot))
