"""`python -m bot generate` as an operator meets it on day one: arguments that cannot
work are refused before anything is paid, blamed on the argument, in one line that
speaks of the shell (no Discord markup or advice), with exit status 2."""

from __future__ import annotations

import json

from tests.emulators.providers import Garbage
from tests.integration.test_cli_generate import GUILD, USER, _env, emu, run_cli

__all__ = ["emu"]  # the fixture, shared with test_cli_generate


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Discord" not in stderr and "<t:" not in stderr and "**" not in stderr
    assert "pyvips" not in stderr  # libvips' chatter stays out of the operator's way
    return errors[0]


async def test_an_out_that_cannot_be_written_is_refused_before_any_provider_call(emu, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = _env(emu, tmp_path / "data")
    for out, expected in (
        (blocker / "images", f"cannot write to --out {blocker / 'images'}: not a directory"),
        (blocker, f"--out {blocker} is a file"),
    ):
        code, _, stderr = await run_cli(
            env, "generate", "--mode", "text", "--provider", "modelslab", "--prompt", "x",
            "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
        assert code == 2
        assert expected in _one_error_line(stderr)
    assert emu.requests_to("text2img") == []


async def test_out_is_created_and_relative_paths_resolve(emu, tmp_path):
    code, stdout, stderr = await run_cli(
        _env(emu, tmp_path / "data"), "generate", "--mode", "text", "--provider", "modelslab",
        "--prompt", "x", "--out", "renders/today", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    assert (tmp_path / "renders" / "today" / "result.json").is_file()
    assert stdout.strip().endswith(".png")


async def test_a_reference_that_cannot_be_fetched_blames_the_image_argument(
    emu, tmp_path, refused_port
):
    env = _env(emu, tmp_path / "data")
    missing = f"{emu.base_url}/refs/never-uploaded.png"
    unreachable = f"http://127.0.0.1:{refused_port}/photo.png"
    for source, reason in (
        (missing, "the server answered 404"),
        (unreachable, "cannot connect"),
        (str(tmp_path / "no-such-photo.jpg"), "cannot read --image"),
    ):
        code, _, stderr = await run_cli(
            env, "generate", "--mode", "edit", "--provider", "nanobanana", "--image", source,
            "--prompt", "x", "--out", str(tmp_path / "out"), cwd=tmp_path,
        )  # fmt: skip
        assert code == 2, stderr
        line = _one_error_line(stderr)
        assert source in line and reason in line
        assert "provider" not in line
    assert emu.requests_to("nbpro") == []


async def test_a_local_file_for_modelslab_gets_shell_advice(emu, tmp_path):
    from tests.emulators.providers import make_png

    photo = tmp_path / "photo.png"
    photo.write_bytes(make_png(256, 256))
    code, _, stderr = await run_cli(
        _env(emu, tmp_path / "data"), "generate", "--mode", "edit", "--provider", "modelslab",
        "--image", str(photo), "--prompt", "x", "--out", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 2
    line = _one_error_line(stderr)
    assert "--image as an https:// URL" in line and "--provider nanobanana" in line
    assert emu.requests_to("img2img") == []


async def test_a_quota_refusal_shows_times_without_discord_markup(emu, tmp_path):
    env = _env(emu, tmp_path / "data")
    code, _, stderr = await run_cli(
        env, "quota", "ban", "--guild", GUILD, "--user", USER, "--hours", "2",
        "--reason", "spam", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    code, _, stderr = await run_cli(
        env, "generate", "--mode", "text", "--provider", "modelslab", "--prompt", "x",
        "--guild", GUILD, "--user", USER, "--out", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 1
    line = _one_error_line(stderr)
    assert "UTC" in line and "spam" in line
    assert emu.requests_to("text2img") == []


async def test_a_result_on_an_unlisted_host_names_it_and_the_setting(emu, tmp_path):
    body = {
        "status": "success",
        "generationTime": 1.0,
        "id": 90210,
        "output": ["https://images.unlisted-cdn.example/r/0.png"],
        "meta": {},
    }
    emu.script("text2img", Garbage(body=json.dumps(body).encode()))
    env = _env(emu, tmp_path / "data")
    code, _, stderr = await run_cli(
        env, "generate", "--mode", "text", "--provider", "modelslab", "--prompt", "x",
        "--guild", GUILD, "--user", USER, "--out", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 2
    line = _one_error_line(stderr)
    assert "images.unlisted-cdn.example" in line and "DOWNLOAD_ALLOWED_HOSTS" in line
    code, stdout, _ = await run_cli(
        env, "quota", "show", "--guild", GUILD, "--user", USER, "--json", cwd=tmp_path
    )
    assert code == 0 and json.loads(stdout)["user"]["used"] == 0
