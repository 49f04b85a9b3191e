"""Generation options end to end: sizes priced by tier, ModelsLab's advanced options,
prompt parameters, styles and Nano Banana Pro's fan-out, through the real bot."""

from __future__ import annotations

import asyncio

from tests.e2e.conftest import World
from tests.e2e.test_bad_input import (
    ATTACHMENT,
    attach,
    blend,
    custom_world,
    nothing_spent,
    refusal,
    slash_imagine,
    success,
)
from tests.e2e.test_generation import (
    decoded_sizes,
    job_id_of,
    opt,
    settled_balance,
    submit_menu_prompt,
)
from tests.emulators.providers import NBError, Processing, make_png

INTEGER, BOOLEAN, NUMBER = 4, 5, 10


def fields_of(message) -> dict[str, str]:
    return {field["name"]: field["value"] for field in message.embeds[0]["fields"]}


async def test_nano_banana_sizes_are_priced_by_tier(world: World):
    costs = world.settings.costs
    for size in ("1k", "2k", "4k"):
        message = await success(
            await slash_imagine(
                world, f"a lighthouse {size}", opt("provider", "nanobanana"), opt("size", size)
            )
        )
        assert fields_of(message)["Credits charged"] == str(costs[f"nbpro_{size}"])
        assert world.providers.requests_to("nbpro")[-1].json["size"] == size
    # The same through the prompt: --size 2k.
    message = await success(
        await slash_imagine(world, "a lighthouse --size 2k", opt("provider", "nanobanana"))
    )
    assert fields_of(message)["Credits charged"] == str(costs["nbpro_2k"])
    assert world.providers.requests_to("nbpro")[-1].json["size"] == "2k"
    expected = sum(costs[f"nbpro_{s}"] for s in ("1k", "2k", "4k", "2k"))
    assert (await settled_balance(world)).used == expected


async def test_4k_needs_the_plan_and_costs_nothing_when_refused(emulators, tmp_path):
    async with custom_world(emulators, tmp_path, nanobanana_allow_4k=False) as world:
        answer = await refusal(
            await slash_imagine(world, "a fox --size 4k", opt("provider", "nanobanana"))
        )
        assert answer.startswith("❌ size 4k needs a Nano Banana Pro plan with 4K generation")
        assert "Choose 1k or 2k." in answer
        await nothing_spent(world)


async def test_modelslab_sizes_and_advanced_options_reach_the_api(world: World):
    message = await success(
        await slash_imagine(
            world,
            "a red fox",
            opt("size", "1k"),
            opt("aspect_ratio", "16:9"),
            opt("steps", "31"),
            opt("guidance", 7.5, NUMBER),
            opt("scheduler", "UniPCMultistepScheduler"),
            opt("enhance_prompt", False, BOOLEAN),
        )
    )
    body = world.providers.requests_to("text2img")[-1].json
    assert (body["width"], body["height"]) == (1024, 576)
    assert body["num_inference_steps"] == 31
    assert body["guidance_scale"] == 7.5
    assert body["scheduler"] == "UniPCMultistepScheduler"
    assert body["enhance_prompt"] == "no"
    assert decoded_sizes(message)[0] == (1024, 576)
    assert fields_of(message)["Credits charged"] == str(world.settings.costs["text2img"])

    # 2k on a blend is nano_banana's largest documented size: 2048 on the long side.
    png = await asyncio.to_thread(make_png, 64, 48)
    images = [await attach(world, png, f"{n}.png") for n in (1, 2)]
    message = await success(
        await blend(
            world,
            images,
            opt("size", "2k"),
            opt("aspect_ratio", "3:2"),
            opt("negative_prompt", "blurry, text"),
        )
    )
    body = world.providers.requests_to("multi_ref")[-1].json
    assert (body["width"], body["height"]) == (2048, 1376)
    assert body["negative_prompt"] == "blurry, text"
    assert fields_of(message)["Credits charged"] == str(
        world.settings.costs["nano_banana_multi_ref"]
    )


async def test_prompt_parameters_set_the_request_and_leave_the_prompt(world: World):
    message = await success(
        await slash_imagine(
            world,
            "a misty forest —ar 16:9 --no trees, fog --seed 42 --steps 21 --guidance 6 "
            "--scheduler lcm --no people",
        )
    )
    body = world.providers.requests_to("text2img")[-1].json
    assert body["prompt"] == "a misty forest"
    assert body["negative_prompt"] == "trees, fog, people"
    assert (body["width"], body["height"], body["seed"]) == (1024, 576, 42)
    assert (body["num_inference_steps"], body["guidance_scale"]) == (21, 6.0)
    assert body["scheduler"] == "LCMScheduler"
    assert message.embeds[0]["description"] == "a misty forest"
    assert fields_of(message)["Seed"] == "42"


async def test_bad_parameters_are_refused_by_name_before_anything_is_spent(world: World):
    cases = [
        (
            "a fox --ar 5:4",
            [],
            "❌ --ar must be one of 1:1, 2:3, 3:2, 3:4, 4:3, 9:16, 16:9, 21:9 (got 5:4).",
        ),
        ("a fox --steps 30", [], "❌ --steps must be one of 21, 31, 41 (got 30)."),
        ("a fox --guidance 25", [], "❌ --guidance must be a number 1 to 20 (got 25)."),
        ("a fox --quality 2", [], "❌ --quality is not a parameter. Parameters are --ar, --no,"),
        (
            "a fox --ar 16:9",
            [opt("aspect_ratio", "1:1")],
            "❌ aspect_ratio is given twice: 1:1 as an option and 16:9 as --ar in the prompt.",
        ),
        (
            "a fox --seed 42 in the snow",
            [],
            "❌ --seed takes one value (a whole number 0 to 4294967295)",
        ),
        (
            "a fox --no trees",
            [opt("provider", "nanobanana")],
            "❌ Nano Banana Pro does not take a negative prompt",
        ),
        (
            "a fox --steps 31",
            [opt("provider", "nanobanana")],
            "❌ nanobanana takes no extra options for text (got num_inference_steps).",
        ),
        ("a fox --style nope", [], "❌ There is no style called nope here. Styles: photo, "),
    ]
    for prompt, options, expected in cases:
        answer = await refusal(await slash_imagine(world, prompt, *options))
        assert answer.startswith(expected), (prompt, answer)
    await nothing_spent(world)


async def test_styles_wrap_the_prompt_and_fill_defaults(world: World):
    message = await success(await slash_imagine(world, "a red fox", opt("style", "cinematic")))
    body = world.providers.requests_to("text2img")[-1].json
    assert body["prompt"].startswith("cinematic film still of a red fox, dramatic lighting")
    assert body["negative_prompt"] == "cartoon, flat lighting, blurry"
    # The style's 21:9 default, at text2img's largest size.
    assert (body["width"], body["height"]) == (1024, 440)
    assert "cinematic film still of a red fox" in message.embeds[0]["description"]
    # --style in the prompt, an explicit ratio beating the style's default.
    await success(await slash_imagine(world, "a red fox --style cinematic --ar 1:1"))
    body = world.providers.requests_to("text2img")[-1].json
    assert (body["width"], body["height"]) == (1024, 1024)
    record = await world.bot.jobs.get(_last_job(world))
    assert record is not None and record.request.style == "cinematic"


def _last_job(world: World) -> str:
    interaction = list(world.discord.interactions.values())[-1]
    custom_ids = interaction.original.custom_ids()
    return custom_ids[0].split(":")[2]


async def test_nano_banana_fans_samples_out_within_its_concurrency(emulators, tmp_path):
    async with custom_world(emulators, tmp_path, nanobanana_concurrency=2) as world:
        # Slow enough that the calls overlap if the bot lets them.
        world.providers.script("nbpro", *[Processing(polls=1, eta=0.3)] * 4)
        message = await success(
            await slash_imagine(
                world, "four foxes", opt("provider", "nanobanana"), opt("samples", 4, INTEGER)
            )
        )
        assert len(world.providers.requests_to("nbpro")) == 4
        assert world.providers.nb_peak_in_flight == 2
        names = [a.filename for a in message.attachments]
        assert names[0].startswith("grid.") and len(names) == 5
        assert fields_of(message)["Credits charged"] == str(4 * world.settings.costs["nbpro_1k"])
        assert len([c for c in message.custom_ids() if c.startswith("ib:up:")]) == 4


async def test_nano_banana_charges_only_the_images_that_arrive(world: World):
    world.providers.script("nbpro", NBError(400, "Generation failed"), *[Processing(polls=1)] * 2)
    message = await success(
        await slash_imagine(
            world, "three foxes", opt("provider", "nanobanana"), opt("samples", 3, INTEGER)
        )
    )
    unit = world.settings.costs["nbpro_1k"]
    assert fields_of(message)["Credits charged"] == str(2 * unit)
    assert len([c for c in message.custom_ids() if c.startswith("ib:up:")]) == 2
    assert (await settled_balance(world)).used == 2 * unit


async def test_nano_banana_fan_out_that_fails_entirely_refunds(world: World):
    world.providers.script("nbpro", *[NBError(400, "Invalid prompt")] * 2)
    answer = await refusal(
        await slash_imagine(
            world, "two foxes", opt("provider", "nanobanana"), opt("samples", 2, INTEGER)
        )
    )
    assert answer == (
        "❌ Nano Banana Pro rejected the request: Invalid prompt. "
        "Change the prompt or options and try again."
    )
    assert (await settled_balance(world)).used == 0


async def test_edit_takes_size_and_style(world: World):
    png = await asyncio.to_thread(make_png, 80, 40)
    image = await attach(world, png, "wide.png")
    interaction = await world.discord.slash(
        "edit",
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        options=[
            opt("image", image["id"], ATTACHMENT),
            opt("prompt", "make it winter"),
            opt("size", "2k"),
            opt("style", "watercolor"),
        ],
        attachments={"image": image},
    )
    await success(interaction)
    body = world.providers.requests_to("img2img")[-1].json
    # No ratio given: the reference's 2:1, long side at 2048.
    assert (body["width"], body["height"]) == (2048, 1024)
    assert body["prompt"].startswith("watercolour painting of make it winter")


async def test_re_roll_and_vary_of_a_styled_result_apply_the_style_once(world: World):
    result = await success(
        await slash_imagine(world, "a red fox --no snow --ar 3:2", opt("style", "anime"))
    )
    styled = world.providers.requests_to("text2img")[-1].json
    job = job_id_of(result)
    reroll = await world.discord.click(result, f"ib:reroll:{job}:0", user_id=world.member_id)
    await success(reroll)
    again = world.providers.requests_to("text2img")[-1].json
    assert again["prompt"] == styled["prompt"]
    assert again["prompt"].count("anime illustration of") == 1
    assert (
        again["negative_prompt"]
        == styled["negative_prompt"]
        == ("snow, photo, realistic, 3d render")
    )
    assert (again["width"], again["height"]) == (styled["width"], styled["height"])
    vary = await world.discord.click(result, f"ib:var:{job}:1", user_id=world.member_id)
    await success(vary)
    varied = world.providers.requests_to("img2img")[-1].json
    assert varied["prompt"] == styled["prompt"]


async def test_the_edit_image_menu_reads_parameters_in_its_prompt(world: World):
    png = await asyncio.to_thread(make_png, 700, 700)
    attachment = world.discord.add_attachment(
        world.channel_id, png, "cat.png", "image/png", ephemeral=False
    )
    target = world.discord.add_message(
        world.channel_id, author_id=world.member_id, attachments=[attachment]
    )
    submitted = await submit_menu_prompt(
        world,
        "Edit image",
        target,
        "give it a hat --style watercolor --size 2k --ar 9:16 --no scarf",
    )
    await success(submitted)
    body = world.providers.requests_to("img2img")[-1].json
    assert body["prompt"].startswith("watercolour painting of give it a hat")
    assert body["negative_prompt"] == "scarf, photo, sharp edges, 3d render"
    assert (body["width"], body["height"]) == (1152, 2048)
    # A bad parameter in a modal is refused like anywhere else, for free.
    submitted = await submit_menu_prompt(world, "Edit image", target, "give it a hat --size 4k")
    answer = await refusal(submitted)
    assert answer.startswith("❌ size 4k is not available for edit on ModelsLab")
    assert len(world.providers.requests_to("img2img")) == 1


async def test_variations_of_a_result_do_not_restyle_it_with_the_members_default(world: World):
    from bot.preferences import Preferences, PreferenceStore

    await PreferenceStore(world.bot.jobs.database).save(
        str(world.guild_id), str(world.member_id), Preferences(style="anime")
    )
    result = await success(await slash_imagine(world, "a red fox --no snow"))
    styled = world.providers.requests_to("text2img")[-1].json
    assert styled["prompt"].startswith("anime illustration of a red fox")
    job = job_id_of(result)
    # V1: the same prompt on the picked image, styled once.
    await success(await world.discord.click(result, f"ib:var:{job}:1", user_id=world.member_id))
    varied = world.providers.requests_to("img2img")[-1].json
    assert varied["prompt"] == styled["prompt"]
    assert varied["negative_prompt"] == styled["negative_prompt"]
    # Edit: the modal starts from the styled prompt; what the member types is
    # read for parameters, and the default style is not wrapped around it again.
    opened = await world.discord.click(result, f"ib:edit:{job}:0", user_id=world.member_id)
    callback = await opened.wait_for_callback()
    edited = await world.discord.submit_modal(
        callback.data["custom_id"],
        {"prompt": styled["prompt"] + ", in the rain --ar 16:9"},
        guild_id=world.guild_id,
        channel_id=world.channel_id,
        user_id=world.member_id,
        message=result,
    )
    await success(edited)
    body = world.providers.requests_to("img2img")[-1].json
    assert body["prompt"] == styled["prompt"] + ", in the rain"
    assert body["prompt"].count("anime illustration of") == 1
    assert (body["width"], body["height"]) == (2048, 1152)
