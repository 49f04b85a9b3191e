"""The bad-input catalogue, end to end: the real bot, both emulators, real bytes.

Every refusal must reach the member as "❌ <what is wrong>", spend no credits and
make no provider call. Inputs the bot accepts on purpose (animated GIF, CMYK,
16-bit, extreme but legal dimensions, prompts full of mentions or markdown) must
succeed, with a valid image at the provider and nothing that can ping anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import discord
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.e2e.conftest import World, make_settings, populate, running_bot
from tests.e2e.test_generation import final, opt, settled_balance, submit_menu_prompt
from tests.emulators.providers import make_png

MIB = 1024 * 1024
ATTACHMENT = 11
INTEGER = 4
CORRUPT = "The image data is corrupt or truncated."
GENERATION_ENDPOINTS = {"text2img", "img2img", "multi_ref", "nbpro"}


# --------------------------------------------------------------------------- bytes


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG header declaring ``width``×``height`` and almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def gif_bomb(width: int, height: int) -> bytes:
    """A GIF whose screen and only frame claim ``width``×``height``."""
    gif = bytearray(encode(Image.new("P", (8, 8)), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)
    frame = gif.index(b",")  # image descriptor: position, then size
    gif[frame + 5 : frame + 9] = struct.pack("<HH", width, height)
    return bytes(gif)


def jpeg_bomb(width: int, height: int) -> bytes:
    """A tiny JPEG whose start-of-frame header claims ``width``×``height``."""
    jpeg = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def png_48_bit(width: int, height: int) -> bytes:
    """16 bits per channel RGB, which Pillow cannot write itself."""
    row = b"\x00" + struct.pack(">HHH", 0xFFFF, 0x8000, 0x0000) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(row * height))
        + _chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (48, 32), color) for color in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.copy()


# --------------------------------------------------------------------------- driving the bot


async def attach(
    world: World, data: bytes, filename: str, content_type: str | None = "image/png"
) -> dict[str, Any]:
    return world.discord.add_attachment(world.channel_id, data, filename, content_type)


async def edit(
    world: World,
    attachment: dict[str, Any],
    *options: dict[str, object],
    prompt: str = "make it winter",
):
    return await world.discord.slash(
        "edit",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        options=[opt("image", attachment["id"], ATTACHMENT), opt("prompt", prompt), *options],
        attachments={"image": attachment},
    )


async def blend(world: World, attachments: Sequence[dict[str, Any]], *options: dict[str, object]):
    slots = {f"image{n}": a for n, a in enumerate(attachments, start=1)}
    return await world.discord.slash(
        "blend",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        options=[
            *(opt(name, a["id"], ATTACHMENT) for name, a in slots.items()),
            opt("prompt", "one scene"),
            *options,
        ],
        attachments=slots,
    )


async def slash_imagine(world: World, prompt: str, *options: dict[str, object]):
    return await world.discord.slash(
        "imagine",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        options=[opt("prompt", prompt), *options],
    )


async def refusal(interaction) -> str:
    """The member's answer, which must be a failure and nothing else."""
    message = await final(interaction)
    assert message.content.startswith("❌ "), message.content
    assert not message.embeds and not message.attachments, message.content
    return str(message.content)


async def success(interaction):
    message = await final(interaction)
    assert message.embeds, message.content
    return message


def generation_calls(world: World) -> list[str]:
    return [r.endpoint for r in world.providers.requests if r.endpoint in GENERATION_ENDPOINTS]


async def nothing_spent(world: World) -> None:
    assert world.providers.requests == [], [r.path for r in world.providers.requests]
    assert (await settled_balance(world)).used == 0


def nobody_pingable(world: World) -> None:
    """Every message text the bot sent refuses @everyone, @here and role pings
    (embeds never ping, so only content needs allowed_mentions)."""
    for request in world.discord.requests:
        body = request.json if isinstance(request.json, dict) else None
        if body is None:
            continue
        # Interaction callbacks wrap the message in "data".
        inner = body["data"] if isinstance(body.get("data"), dict) else body
        if not inner.get("content"):
            continue
        mentions = inner.get("allowed_mentions")
        assert mentions is not None, f"{request.method} {request.path} may ping anyone"
        assert "everyone" not in mentions.get("parse", []), request.path
        assert "roles" not in mentions.get("parse", []) and not mentions.get("roles"), request.path


@contextlib.asynccontextmanager
async def custom_world(emulators, tmp_path, **overrides: Any) -> AsyncIterator[World]:
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    bot_settings = make_settings(discord_emu, providers, tmp_path / "data", **overrides)
    async with running_bot(bot_settings, discord_emu) as bot:
        await bot.sync_commands()
        yield World(discord_emu, providers, bot, bot_settings, **ids)
    discord_emu.assert_no_violations()


@pytest.fixture
async def roomy_world(emulators, tmp_path) -> AsyncIterator[World]:
    """Credits for dozens of accepted jobs: damage that leaves a valid image is paid for."""
    async with custom_world(
        emulators,
        tmp_path,
        default_pool_credits=100_000,
        default_user_allowance=100_000,
    ) as world:
        yield world


# --------------------------------------------------------------------------- attachments


NOT_IMAGES = [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "cat.png", "a PDF, not an image"),
    (b"PK\x03\x04\x14\x00" + bytes(40), "cat.png", "a ZIP archive, not an image"),
    (b"\x00\x00\x00\x18ftypisom" + bytes(40), "clip.png", "a video (MP4), not an image"),
    (b"\x00\x00\x00\x18ftypheic" + bytes(40), "IMG_0001.png", "a HEIC image, which is not sup"),
    (b"just a note to self\n", "notes.png", "a text file, not an image"),
    (b"<!DOCTYPE html><html><body>hi", "page.png", "a web page (HTML), not an image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "logo.png", "an SVG drawing, which is not"),
    (b"\x13\x37\x00\x01garbage\xff\xfe", "blob.png", "not a PNG, JPEG, WebP or GIF image"),
]


async def test_non_image_attachments_are_named_and_cost_nothing(world: World):
    for data, filename, named in NOT_IMAGES:
        answer = await refusal(await edit(world, await attach(world, data, filename)))
        assert named in answer, (filename, answer)
        assert answer.endswith("Use PNG, JPEG, WebP or GIF."), answer
    await nothing_spent(world)


async def test_empty_and_oversized_files(world: World):
    answer = await refusal(await edit(world, await attach(world, b"", "empty.png")))
    assert answer == "❌ The file is empty."

    png = await asyncio.to_thread(make_png, 32, 32)
    declared = await attach(world, png, "huge.png")
    declared["size"] = 30 * MIB  # what Discord reports; the bytes need not exist
    downloads = len(world.discord.cdn_downloads)
    answer = await refusal(await edit(world, declared))
    assert "huge.png" in answer and "the most allowed is" in answer, answer
    assert len(world.discord.cdn_downloads) == downloads  # refused on the declared size

    # Discord's size is normally right; the cap on the bytes themselves is the backstop.
    padded = await attach(
        world, encode(Image.new("RGB", (16, 16)), "PNG") + bytes(26 * MIB), "p.png"
    )
    padded["size"] = 1024
    answer = await refusal(await edit(world, padded))
    assert answer.startswith("❌ The file is 26") and "the most allowed is 25 MB" in answer
    await nothing_spent(world)


async def test_oversized_file_message_uses_discords_units(world: World):
    png = await asyncio.to_thread(make_png, 32, 32)
    attachment = await attach(world, png, "huge.png")
    attachment["size"] = 30 * MIB
    answer = await refusal(await edit(world, attachment))
    assert answer == "❌ huge.png is 30 MB; the most allowed is 25 MB."


async def test_decompression_bombs_are_refused_from_the_header(world: World):
    real_bomb = await asyncio.to_thread(encode, Image.new("L", (8000, 6000)), "PNG")
    cases = [
        (png_bomb(30_000, 30_000), "bomb.png", "The image is 30000×30000 pixels"),
        (png_bomb(7_000, 7_000), "b.png", "The image is 7000×7000 pixels"),
        (gif_bomb(65_535, 65_535), "bomb.gif", "The image is 65535×65535 pixels"),
        (jpeg_bomb(60_000, 60_000), "bomb.jpg", "The image is "),
        (real_bomb, "blank.png", "The image is 8000×6000 pixels"),
    ]
    for data, filename, expected in cases:
        assert len(data) < 200_000, filename  # the point: tiny files, huge pixel counts
        answer = await refusal(await edit(world, await attach(world, data, filename)))
        assert answer.startswith(f"❌ {expected}"), (filename, answer)
        assert answer.endswith("the most allowed is 40 megapixels."), answer
    await nothing_spent(world)


async def test_corrupt_and_truncated_images(world: World):
    base = Image.radial_gradient("L").convert("RGB")
    png, jpeg, webp = (encode(base, fmt) for fmt in ("PNG", "JPEG", "WEBP"))
    gif = animated_gif()
    idat = png.index(b"IDAT")
    cases = {
        "half.png": png[: len(png) // 2],
        "header-only.png": png[:33],
        "half.jpg": jpeg[: len(jpeg) // 2],
        "half.webp": webp[: len(webp) // 2],
        "cut.gif": gif[:40],
        "garbled.png": png[: idat + 4] + bytes(64) + png[idat + 68 :],
        "signature-then-noise.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "zero-size.png": png_bomb(0, 0),
    }
    for filename, data in cases.items():
        answer = await refusal(await edit(world, await attach(world, data, filename)))
        assert answer == f"❌ {CORRUPT}", (filename, answer)
    await nothing_spent(world)


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF"]))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    data = encode(im, fmt)
    damage = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if damage == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    at = draw(st.integers(0, len(data) - 1))
    if damage == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]


def jpeg_with_a_broken_end() -> bytes:
    """Its end-of-image marker damaged (FFD9 → FFD8): libvips decodes every row
    of it, even failing on warnings; Pillow, as the provider emulator decodes a
    reference, refuses it ("broken data stream"). Found by the test below."""
    data = encode(Image.linear_gradient("L").resize((33, 17)).convert("RGB"), "JPEG")
    assert data.endswith(b"\xff\xd9")
    return data[:-1] + b"\xd8"


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=damaged_images())
@example(data=jpeg_with_a_broken_end())
async def test_any_damaged_image_is_refused_cleanly_or_reaches_the_provider_intact(
    roomy_world: World, data: bytes
):
    """Damage that leaves a decodable image may run; anything else is a specific
    refusal with no provider call. Never an error report, never a charge for nothing.
    Decoders differ, though: one the bot's reads whole, the provider's may refuse,
    and the provider's refusal then reaches the member as such, free."""
    world = roomy_world
    calls_before = len(generation_calls(world))
    used_before = (await settled_balance(world)).used
    attachment = await attach(world, data, "damaged.png")
    message = await final(await edit(world, attachment))
    used = (await settled_balance(world)).used - used_before
    if message.embeds:
        assert generation_calls(world)[calls_before:] == ["img2img"]
        sent = world.providers.requests_to("img2img")[-1].json
        assert sent["ref_image"] == attachment["url"]
        assert used == world.settings.costs["nano_banana_img2img"]
        return
    assert message.content.startswith("❌ "), message.content
    assert used == 0
    if generation_calls(world)[calls_before:]:
        assert generation_calls(world)[calls_before:] == ["img2img"]
        assert "could not read your reference image" in message.content, message.content
        return
    specific = (
        "❌ The image data is corrupt or truncated.",
        "❌ That file is",
        "❌ The file is empty.",
        "❌ The image is ",
    )
    assert message.content.startswith(specific), message.content


# --------------------------------------------------------------------------- accepted inputs


def accepted_inputs() -> list[tuple[str, bytes, tuple[int, int], str]]:
    cmyk = encode(Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "JPEG", quality=95)
    gray16 = encode(Image.new("I;16", (32, 24), 0x8000), "PNG")
    return [
        ("anim.gif", animated_gif(), (48, 32), "image/gif"),
        ("print.jpg", cmyk, (50, 40), "image/jpeg"),
        ("scan16.png", gray16, (32, 24), "image/png"),
        ("deep48.png", png_48_bit(20, 10), (20, 10), "image/png"),
        (
            "strip.png",
            encode(Image.new("RGB", (1, 8000), (9, 9, 9)), "PNG"),
            (1, 8000),
            "image/png",
        ),
        ("wide.png", encode(Image.new("RGB", (8000, 1), (9, 9, 9)), "PNG"), (8000, 1), "image/png"),
        ("dot.png", encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), (1, 1), "image/png"),
    ]


async def test_unusual_but_valid_images_reach_the_providers_as_valid_images(world: World):
    """ModelsLab takes references by URL: the member's file, fetched and decoded
    by the provider (the emulator refuses a reference it cannot decode)."""
    for filename, data, size, mime in accepted_inputs():
        attachment = await attach(world, data, filename, mime)
        await success(await edit(world, attachment))
        sent = world.providers.requests_to("img2img")[-1].json
        assert sent["ref_image"] == attachment["url"], filename
        # Extreme shapes still ask for a size the endpoint takes.
        assert 1024 <= sent["width"] <= 2048 and sent["width"] % 32 == 0, (filename, sent)
        assert 1024 <= sent["height"] <= 2048 and sent["height"] % 32 == 0, (filename, sent)
        assert decoded(data).size == size
    # Nano Banana Pro gets uploads: those must be plain 8-bit RGB(A) whatever came in.
    for filename, data, size, mime in accepted_inputs():
        attachment = await attach(world, data, filename, mime)
        await success(await edit(world, attachment, opt("provider", "nanobanana")))
        upload = world.providers.requests_to("nbpro")[-1].files
        assert len(upload) == 1, filename
        image = decoded(upload[0].data)
        assert image.mode in ("RGB", "RGBA"), (filename, image.mode)
        assert image.size == size, filename
        if filename == "anim.gif":
            r, g, b = image.convert("RGB").getpixel((5, 5))  # type: ignore[misc]
            assert r > 200 and g < 60 and b < 60  # the first frame, not the second
        if filename == "print.jpg":
            r, g, b = image.convert("RGB").getpixel((5, 5))  # type: ignore[misc]
            assert (
                r > 200 and g < 60 and b < 60
            )  # magenta + yellow ink is red: CMYK converted, not inverted
        if filename == "scan16.png":
            level = image.convert("L").getpixel((0, 0))
            assert 120 <= level <= 136  # scaled to 8 bits, not clipped to white


# --------------------------------------------------------------------------- prompts


BLANK_PROMPTS = [
    "",
    " ",
    "\n\t  \n",
    "\u3000\u00a0",  # ideographic and no-break spaces
    "\u200b\u200b",  # zero-width spaces
    "\u2800",  # blank Braille pattern
    "\u3164",  # Hangul filler
    "\u200e\u200f",  # direction marks
]


async def test_blank_and_over_long_prompts_are_refused(world: World):
    for prompt in BLANK_PROMPTS:
        answer = await refusal(await slash_imagine(world, prompt))
        assert answer == "❌ prompt must not be empty.", repr(prompt)
    for length in (2001, 5000, 40_000):
        answer = await refusal(await slash_imagine(world, ("a fox " * length)[: length - 1] + "x"))
        assert answer == f"❌ prompt must be at most 2000 characters (got {length})."
    await nothing_spent(world)


HOSTILE_PROMPTS = [
    "@everyone @here look at this fox",
    "<@&1234567890> <@1234567890> <#1234567890> a fox",
    "**bold** __under__ ~~strike~~ `code` ||spoiler|| a fox",
    "[free nitro](https://evil.example) a fox",
    "# Heading\n> quote\n- list\n-# small a fox",
    "```\ncode block @everyone\n```",
    "*_" * 1000,  # 2000 characters that double when escaped
]


async def test_prompts_full_of_mentions_and_markdown_succeed_without_pinging(world: World):
    for prompt in HOSTILE_PROMPTS:
        message = await success(await slash_imagine(world, prompt))
        description = message.embeds[0]["description"]
        assert description == discord.utils.escape_markdown(prompt)[:3900], prompt
        # The provider gets the member's words as written.
        assert world.providers.requests_to("text2img")[-1].json["prompt"] == prompt.strip()
        assert not message.content or "@everyone" not in message.content
    message = await success(
        await slash_imagine(world, "a fox", opt("negative_prompt", "**no** @everyone"))
    )
    fields = {f["name"]: f["value"] for f in message.embeds[0]["fields"]}
    assert fields["Negative prompt"] == "\\*\\*no\\*\\* @everyone"
    nobody_pingable(world)


# --------------------------------------------------------------------------- numbers and names


OUT_OF_RANGE = [
    ([opt("seed", -1, INTEGER)], "seed must be a whole number 0 to 4294967295 (got -1)."),
    (
        [opt("seed", 2**32, INTEGER)],
        "seed must be a whole number 0 to 4294967295 (got 4294967296).",
    ),
    ([opt("samples", 0, INTEGER)], "samples must be a whole number 1 to 4 (got 0)."),
    ([opt("samples", 5, INTEGER)], "samples must be a whole number 1 to 4 (got 5)."),
    ([opt("samples", -3, INTEGER)], "samples must be a whole number 1 to 4 (got -3)."),
    (
        [opt("aspect_ratio", "5:7")],
        "aspect_ratio must be one of 1:1, 2:3, 3:2, 3:4, 4:3, 9:16, 16:9, 21:9 (got 5:7).",
    ),
    (
        [opt("provider", "nanobanana"), opt("size", "8k")],
        "size must be one of 1k, 2k, 4k (got 8k).",
    ),
    (
        [opt("size", "2k")],
        "size 2k is not available for text to image on ModelsLab (at most 1024×1024); "
        "choose 1k, or Nano Banana Pro for 2k and 4k.",
    ),
    (
        [opt("provider", "nanobanana"), opt("seed", 3, INTEGER)],
        "Nano Banana Pro does not take a seed; remove seed.",
    ),
    (
        [opt("provider", "dalle")],
        "provider must be one of modelslab, nanobanana (got dalle).",
    ),
    ([opt("model", "sdxl-nope")], "model must be one of flux (got sdxl-nope)."),
    (
        [opt("model", "**big** @everyone [x](https://e.example)")],
        "model must be one of flux (got \\*\\*big\\*\\* @everyone \\[x\\](https://e.example)).",
    ),
    (
        [opt("provider", "nanobanana"), opt("model", "flux")],
        "Nano Banana Pro has no model choice; remove model.",
    ),
]


async def test_out_of_range_numbers_and_unknown_names(world: World):
    """Discord enforces the declared limits before the bot hears of a command; the
    pipeline enforces the same ones for values that arrive anyway (a raw
    interaction here) and for names Discord cannot check."""
    commands = {c["name"]: c for c in world.discord.registered_commands()}
    for name in ("imagine", "edit", "blend"):
        declared = {o["name"]: o for o in commands[name]["options"]}
        assert (declared["prompt"]["min_length"], declared["prompt"]["max_length"]) == (1, 2000)
        assert (declared["samples"]["min_value"], declared["samples"]["max_value"]) == (1, 4)
        assert (declared["seed"]["min_value"], declared["seed"]["max_value"]) == (0, 4_294_967_295)
        ratios = [c["value"] for c in declared["aspect_ratio"]["choices"]]
        assert ratios == ["1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9"]
    negative = {o["name"]: o for o in commands["imagine"]["options"]}["negative_prompt"]
    assert negative["max_length"] == 1000
    blend_images = [o for o in commands["blend"]["options"] if o["type"] == ATTACHMENT]
    assert len(blend_images) == 6
    for options, expected in OUT_OF_RANGE:
        answer = await refusal(await slash_imagine(world, "a fox", *options))
        assert answer == f"❌ {expected}", options
    png = await asyncio.to_thread(make_png, 64, 64)
    attachment = await attach(world, png, "a.png")
    answer = await refusal(await edit(world, attachment, opt("provider", "x")))
    assert answer == "❌ provider must be one of modelslab, nanobanana (got x)."
    await nothing_spent(world)
    nobody_pingable(world)


async def test_unknown_provider_name_is_shown_as_typed(world: World):
    answer = await refusal(await slash_imagine(world, "a fox", opt("provider", "**x**")))
    assert answer == "❌ provider must be one of modelslab, nanobanana (got \\*\\*x\\*\\*)."


# --------------------------------------------------------------------------- references


async def test_more_references_than_modelslab_takes(world: World):
    png = await asyncio.to_thread(make_png, 64, 64)
    for count in (5, 6):
        refs = [await attach(world, png, f"r{n}.png") for n in range(count)]
        answer = await refusal(await blend(world, refs))
        assert answer == f"❌ blend takes 2 to 4 reference images (got {count}).", answer
    # The "Blend images" menu takes every image of a message: no six-slot limit.
    images = [
        world.discord.add_attachment(
            world.channel_id, png, f"p{n}.png", "image/png", ephemeral=False
        )
        for n in range(10)
    ]
    target = world.discord.add_message(
        world.channel_id, author_id=world.member_id, attachments=images
    )
    submitted = await submit_menu_prompt(world, "Blend images", target, "all of them")
    answer = await refusal(submitted)
    assert answer == "❌ blend takes 2 to 4 reference images (got 10)."
    await nothing_spent(world)


async def test_more_references_than_the_nano_banana_plan_takes(emulators, tmp_path):
    async with custom_world(emulators, tmp_path, nanobanana_max_references=3) as world:
        png = await asyncio.to_thread(make_png, 64, 64)
        refs = [await attach(world, png, f"r{n}.png") for n in range(4)]
        answer = await refusal(await blend(world, refs, opt("provider", "nanobanana")))
        assert answer == "❌ blend takes 2 to 3 reference images (got 4)."
        await nothing_spent(world)


async def test_a_bad_file_among_several_is_named(world: World):
    png = await asyncio.to_thread(make_png, 64, 64)
    refs = [
        await attach(world, png, "good.png"),
        await attach(world, b"%PDF-1.7 x", "second.png"),
    ]
    answer = await refusal(await blend(world, refs))
    assert "second.png" in answer
