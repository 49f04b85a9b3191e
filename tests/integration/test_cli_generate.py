"""`python -m bot generate` end to end: a real subprocess against the provider emulator."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.jobstore import JobStore
from bot.styles import Style, StyleStore
from tests.emulators.providers import Error, NBError, ProviderEmulator, make_png

ML_KEY = "ml-KEY-d41d8cd98f00b204"
NB_KEY = "sk-KEY-e9800998ecf8427e"
# Discord ids (snowflakes), as the quota commands require.
GUILD, USER = "418151490012345678", "418151490087654321"


@pytest.fixture
async def emu():
    async with ProviderEmulator(modelslab_key=ML_KEY, nanobanana_key=NB_KEY) as emulator:
        yield emulator


def _env(emu: ProviderEmulator, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir),
        "MODELSLAB_API_KEY": ML_KEY,
        "MODELSLAB_BASE_URL": emu.modelslab_base_url,
        "NANOBANANA_API_KEY": NB_KEY,
        "NANOBANANA_BASE_URL": emu.nanobanana_base_url,
        "DATA_DIR": str(data_dir),
        "DOWNLOAD_ALLOW_LOOPBACK": "true",
        "POLL_INITIAL": "0.01",
        "POLL_MAX": "0.05",
        "RETRY_BACKOFF_MAX": "0.05",
    }
    env.update(extra)
    return env


async def run_cli(env: dict[str, str], *args: str, cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "--env-file",
        os.devnull,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def _images_in(out: Path) -> list[Image.Image]:  # loaded images, for their sizes
    result = json.loads((out / "result.json").read_text())
    images: list[Image.Image] = []
    for entry in result["files"]:
        with Image.open(io.BytesIO((out / entry["name"]).read_bytes())) as image:
            image.load()
            assert (image.width, image.height) == (entry["width"], entry["height"])
            images.append(image)
    return images


def _no_secrets(*texts: str) -> None:
    for text in texts:
        assert ML_KEY not in text
        assert NB_KEY not in text


async def test_text2img_writes_images_and_result(emu, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = await run_cli(
        _env(emu, tmp_path / "data"),
        "generate",
        "--mode", "text",
        "--provider", "modelslab",
        "--prompt", "a lighthouse at dusk",
        "--negative-prompt", "blurry",
        "--samples", "2",
        "--seed", "42",
        "--width", "768",
        "--height", "512",
        "--out", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    images = _images_in(out)
    assert [(i.width, i.height) for i in images] == [(768, 512), (768, 512)]
    result = json.loads((out / "result.json").read_text())
    assert result["provider"] == "modelslab"
    assert result["seed"] == 42
    assert result["request"]["prompt"] == "a lighthouse at dusk"
    assert result["credits"]["charged"] == 2
    sent = emu.requests_to("text2img")[-1].json
    assert sent["key"] == ML_KEY
    assert sent["prompt"] == "a lighthouse at dusk"
    assert sent["negative_prompt"] == "blurry"
    assert (sent["width"], sent["height"], sent["samples"], sent["seed"]) == (768, 512, 2, 42)
    _no_secrets(stdout, stderr, (out / "result.json").read_text())


async def test_img2img_and_multi_ref_by_url(emu, tmp_path):
    ref_a = emu.add_reference("a.png", await asyncio.to_thread(make_png, 1024, 1024))
    ref_b = emu.add_reference("b.png", await asyncio.to_thread(make_png, 640, 480))
    env = _env(emu, tmp_path / "data")

    code, _, stderr = await run_cli(
        env, "generate", "--mode", "edit", "--provider", "modelslab", "--image", ref_a,
        "--prompt", "make it winter", "--out", str(tmp_path / "edit"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    assert len(_images_in(tmp_path / "edit")) == 1
    assert emu.requests_to("img2img")[-1].json["ref_image"] in (ref_a, [ref_a])

    code, _, stderr = await run_cli(
        env, "generate", "--mode", "blend", "--provider", "modelslab",
        "--image", ref_a, "--image", ref_b, "--prompt", "combine them",
        "--out", str(tmp_path / "blend"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    assert len(_images_in(tmp_path / "blend")) == 1
    assert emu.requests_to("multi_ref")[-1].json["ref_image"] == [ref_a, ref_b]


async def test_nano_banana_pro_text_and_uploaded_file(emu, tmp_path):
    env = _env(emu, tmp_path / "data")
    code, _, stderr = await run_cli(
        env, "generate", "--mode", "text", "--provider", "nanobanana",
        "--prompt", "a koi pond", "--size", "1k", "--aspect-ratio", "16:9",
        "--out", str(tmp_path / "nb-text"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    (image,) = _images_in(tmp_path / "nb-text")
    assert image.width > image.height
    call = emu.requests_to("nbpro")[-1]
    assert call.headers["Authorization"] == f"Bearer {NB_KEY}"
    assert call.json == {"prompt": "a koi pond", "size": "1k", "aspectRatio": "16:9"}

    photo = tmp_path / "photo.jpg"  # named .jpg, really a PNG: sniffed, not trusted
    photo.write_bytes(await asyncio.to_thread(make_png, 800, 600))
    code, _, stderr = await run_cli(
        env, "generate", "--mode", "edit", "--provider", "nanobanana", "--image", str(photo),
        "--prompt", "watercolour", "--out", str(tmp_path / "nb-edit"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    assert len(_images_in(tmp_path / "nb-edit")) == 1
    upload = emu.requests_to("nbpro")[-1]
    assert upload.form["prompt"] == ["watercolour"]
    assert len(upload.files) == 1
    assert upload.files[0].field == "image"


async def test_provider_failure_exits_1_with_one_line_and_refunds(emu, tmp_path):
    env = _env(emu, tmp_path / "data")
    emu.script("text2img", Error(http_status=402, message="Insufficient credits"))
    code, stdout, stderr = await run_cli(
        env, "generate", "--mode", "text", "--provider", "modelslab", "--prompt", "x",
        "--guild", GUILD, "--user", USER, "--out", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert "credit" in lines[0].lower()
    assert not (tmp_path / "out" / "result.json").exists()
    _no_secrets(stdout, stderr)

    code, stdout, _ = await run_cli(
        env, "quota", "show", "--guild", GUILD, "--user", USER, "--json", cwd=tmp_path
    )
    assert code == 0
    shown = json.loads(stdout)
    assert shown["guild"]["used"] == 0
    assert shown["guild"]["reserved"] == 0
    assert shown["user"]["used"] == 0


async def test_nano_banana_error_body_exits_1(emu, tmp_path):
    emu.script("nbpro", NBError(http_status=400, error="Prompt rejected by safety filter"))
    code, _, stderr = await run_cli(
        _env(emu, tmp_path / "data"), "generate", "--mode", "text", "--provider", "nanobanana",
        "--prompt", "x", "--out", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 1
    assert "safety filter" in stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--samples", "9"], "samples"),
        (["--width", "512"], "--width and --height"),
        (["--aspect-ratio", "5:4"], "invalid choice"),
        (["--option", "scheduler=NotAScheduler"], "scheduler"),
    ],
)
async def test_bad_usage_exits_2_before_any_provider_call(emu, tmp_path, args, needle):
    code, _, stderr = await run_cli(
        _env(emu, tmp_path / "data"), "generate", "--mode", "text", "--provider", "modelslab",
        "--prompt", "x", *args, "--out", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 2
    assert needle in stderr
    assert emu.requests_to("text2img") == []


async def test_missing_key_exits_2_naming_the_setting(emu, tmp_path):
    env = _env(emu, tmp_path / "data")
    del env["NANOBANANA_API_KEY"]
    code, _, stderr = await run_cli(
        env, "generate", "--mode", "text", "--provider", "nanobanana", "--prompt", "x",
        "--out", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 2
    assert "NANOBANANA_API_KEY" in stderr


async def test_corrupt_local_image_exits_2(emu, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    code, _, stderr = await run_cli(
        _env(emu, tmp_path / "data"), "generate", "--mode", "edit", "--provider", "nanobanana",
        "--image", str(broken), "--prompt", "x", "--out", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 2
    assert "corrupt" in stderr.lower() or "truncated" in stderr.lower()
    assert emu.requests_to("nbpro") == []


async def test_style_and_prompt_parameters_as_in_discord(emu, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    async with JobStore.connect(data / "bot.db") as jobs:
        await StyleStore(jobs.database).add(
            GUILD, Style("noir", "film noir still of {prompt}", size="1k"), by=USER
        )
    out = tmp_path / "out"
    code, _, stderr = await run_cli(
        _env(emu, data),
        "generate",
        "--mode", "text",
        "--prompt", "a lighthouse --ar 16:9 --no boats --seed 7",
        "--style", "cinematic",
        "--out", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    sent = emu.requests_to("text2img")[-1].json
    assert sent["prompt"].startswith("cinematic film still of a lighthouse, dramatic lighting")
    assert sent["negative_prompt"] == "boats, cartoon, flat lighting, blurry"
    # The explicit --ar beats the style's 21:9.
    assert (sent["width"], sent["height"], sent["seed"]) == (1024, 576, 7)
    result = json.loads((out / "result.json").read_text())
    assert result["request"]["style"] == "cinematic"

    # A guild's own style, named in the prompt.
    code, _, stderr = await run_cli(
        _env(emu, data),
        "generate",
        "--mode", "text",
        "--prompt", "a lighthouse --style noir",
        "--guild", GUILD,
        "--user", USER,
        "--out", str(tmp_path / "out2"),
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    sent = emu.requests_to("text2img")[-1].json
    assert sent["prompt"] == "film noir still of a lighthouse"
    assert (sent["width"], sent["height"]) == (1024, 1024)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--prompt", "a fox --ar 5:4"],
            "error: --ar must be one of 1:1, 2:3, 3:2, 3:4, 4:3, 9:16, 16:9, 21:9 (got 5:4).",
        ),
        (
            ["--prompt", "a fox --ar 16:9", "--aspect-ratio", "1:1"],
            "error: aspect_ratio is given twice: 1:1 as an option and 16:9 as --ar in the prompt.",
        ),
        (["--prompt", "a fox", "--style", "nope"], "error: There is no style called nope here."),
    ],
)
async def test_bad_parameters_and_styles_exit_2_before_any_call(emu, tmp_path, args, message):
    code, _, stderr = await run_cli(
        _env(emu, tmp_path / "data"),
        "generate",
        "--mode", "text",
        *args,
        "--out", str(tmp_path / "out"),
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), stderr
    assert emu.requests == []
