"""The Docker image without a Docker engine: the Dockerfile's own steps, run on this
machine, and compose.yaml checked against the Dockerfile and the settings.

The build stage's COPY and RUN lines are read from the Dockerfile and executed as
written, with the image's paths (/src, /opt/venv, /app, /data) mapped into a
temporary directory and ``python`` being this machine's base interpreter, the same
minor version as the image's. The one liberty: pip may use the local wheel cache
(``--no-cache-dir``/``PIP_NO_CACHE_DIR`` dropped), which changes where wheels come
from, not what is installed. Then the runtime stage's CMD starts the bot from that
venv, in an empty working directory, against the Discord emulator, and its
HEALTHCHECK must pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from bot.config import Settings
from tests.e2e.conftest import populate
from tests.emulators.discord import DiscordEmulator

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    base: str
    steps: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [rest for name, rest in self.steps if name == instruction]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their (INSTRUCTION, arguments) steps; continuations joined."""
    logical: list[str] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    stages: list[Stage] = []
    for line in logical:
        name, _, rest = line.partition(" ")
        if name.upper() == "FROM":
            stages.append(Stage(rest.strip()))
        else:
            stages[-1].steps.append((name.upper(), rest.strip()))
    return stages


def env_pairs(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(text))


def exec_form(text: str) -> list[str]:
    text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text)
    value = json.loads(text)
    assert isinstance(value, list), "CMD and HEALTHCHECK must use the exec form (signals)"
    return [str(part) for part in value]


class ImagePaths:
    """The image's absolute paths, inside a temporary root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, text: str) -> str:
        return re.sub(r"(?<![\w.])/(src|opt/venv|app|data)\b", lambda m: f"{self.root}{m[0]}", text)


@dataclass
class Installed:
    runtime: Stage
    env: dict[str, str]
    app: Path
    command: list[str]
    health: list[str]


def install_as_the_dockerfile_does(tmp_path: Path) -> Installed:
    build, runtime = parse_dockerfile(ROOT / "Dockerfile")
    assert build.base.startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}")
    image = ImagePaths(tmp_path)
    # `python` in RUN lines is the image's interpreter, outside any venv.
    bin_dir = tmp_path / "base-bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
    }
    # This machine's pip configuration (indexes, wheel directories) and cache.
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    workdir = tmp_path
    for instruction, rest in build.steps:
        if instruction == "ENV":
            pairs = env_pairs(rest)
            pairs.pop("PIP_NO_CACHE_DIR", None)
            env.update(pairs)
        elif instruction == "WORKDIR":
            workdir = Path(image(rest))
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, destination = shlex.split(rest)
            target = workdir / destination
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif instruction == "RUN":
            command = image(rest).replace(" --no-cache-dir", "")
            done = subprocess.run(
                ["/bin/sh", "-c", command], cwd=workdir, env=env,
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, f"RUN {command}\n{(done.stdout + done.stderr)[-3000:]}"
        else:
            raise AssertionError(f"the test does not know how to mirror {instruction} {rest}")

    # Runtime stage: the venv comes over as is; users and modes are the image's business.
    copies = runtime.args("COPY")
    assert copies == ["--from=build /opt/venv /opt/venv"], copies
    runtime_env: dict[str, str] = {}
    for rest in runtime.args("ENV"):
        runtime_env.update(env_pairs(rest))
    assert runtime_env["DATA_DIR"] == "/data"
    assert runtime.args("VOLUME") == ['["/data"]']
    run_env = {
        key: image(value.replace("$PATH", os.environ.get("PATH", "/usr/bin:/bin")))
        for key, value in runtime_env.items()
    }
    app = Path(image(runtime.args("WORKDIR")[-1]))
    app.mkdir(parents=True, exist_ok=True)
    (tmp_path / "data").mkdir(mode=0o700)
    # The bot runs from the venv, not from this checkout: the migrations are there too.
    where = subprocess.run(
        ["python", "-c", "import bot.migrate as m; print(m.MIGRATIONS_DIR)"],
        cwd=app, env=run_env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    migrations = Path(where.stdout.strip())
    assert migrations.is_relative_to(tmp_path / "opt" / "venv"), migrations
    assert list(migrations.glob("001_*.sql")) and list(migrations.glob("postgres/001_*.sql"))
    return Installed(
        runtime,
        run_env,
        app,
        exec_form(runtime.args("CMD")[-1]),
        exec_form(runtime.args("HEALTHCHECK")[-1]),
    )


@pytest.mark.slow
async def test_the_dockerfile_installs_a_bot_that_starts_and_is_healthy(tmp_path):
    installed = await asyncio.to_thread(install_as_the_dockerfile_does, tmp_path)
    run_env, app = installed.env, installed.app

    async with DiscordEmulator(heartbeat_interval=2.0) as discord_emu:
        populate(discord_emu)
        run_env.update(
            HOME=str(tmp_path),
            DISCORD_TOKEN=discord_emu.token,
            DISCORD_API_BASE_URL=discord_emu.api_base,
            DISCORD_GATEWAY_URL=discord_emu.gateway_url,
            NANOBANANA_API_KEY="sk-docker-test",
        )
        log = tmp_path / "bot.log"
        with log.open("wb") as sink:
            bot = await asyncio.create_subprocess_exec(
                *installed.command, cwd=app, env=run_env, stdout=sink, stderr=sink
            )
        try:
            await discord_emu.wait_for(
                lambda: discord_emu.identifies > 0, timeout=60, what="IDENTIFY"
            )
            await discord_emu.wait_until_ready(timeout=30)
            await discord_emu.wait_for(
                lambda: (tmp_path / "data" / "heartbeat").exists(), timeout=30, what="heartbeat"
            )
            probe = await asyncio.create_subprocess_exec(*installed.health, cwd=app, env=run_env)
            assert await probe.wait() == 0
            assert (tmp_path / "data" / "bot.db").exists()  # the database is in the volume
            bot.send_signal(signal.SIGTERM)  # what `docker stop` sends
            assert await asyncio.wait_for(bot.wait(), 30) == 0
        finally:
            if bot.returncode is None:
                bot.kill()
                await bot.wait()
        assert "Traceback" not in log.read_text()


def test_the_build_context_leaves_out_secrets_data_and_venvs():
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", "data", ".venv", ".git"} <= ignored
    build, _ = parse_dockerfile(ROOT / "Dockerfile")
    for rest in build.args("COPY"):
        for source in shlex.split(rest)[:-1]:
            assert source.rstrip("/") not in ignored, f"COPY {source} is excluded from the context"


def test_dependencies_are_installed_before_the_code_is_copied():
    """A code change must not invalidate the layer that installs the dependencies."""
    build, _ = parse_dockerfile(ROOT / "Dockerfile")
    steps = build.steps
    install = next(
        i for i, (name, rest) in enumerate(steps) if name == "RUN" and "-r requirements" in rest
    )
    copied_before = [rest for name, rest in steps[:install] if name == "COPY"]
    assert copied_before == ["pyproject.toml ./"]
    code = [i for i, (name, rest) in enumerate(steps) if name == "COPY" and "bot" in rest]
    assert code and min(code) > install


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_runs_the_image_with_its_volume_grace_and_health_check():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    _, runtime = parse_dockerfile(ROOT / "Dockerfile")
    bot = compose["services"]["bot"]
    assert bot["build"] == "."
    assert bot["env_file"] == ".env"

    # The data volume is mounted where the image keeps DATA_DIR.
    data_dir = ""
    for rest in runtime.args("ENV"):
        data_dir = env_pairs(rest).get("DATA_DIR", data_dir)
    volume, _, mount = bot["volumes"][0].partition(":")
    assert mount == data_dir == "/data"
    assert volume in compose["volumes"]

    # docker stop waits longer than the bot lets jobs finish.
    grace = Settings.model_fields["shutdown_grace"].default
    assert _seconds(bot["stop_grace_period"]) > grace + 10

    # The same health check as the image's.
    assert bot["healthcheck"]["test"] == ["CMD", *exec_form(runtime.args("HEALTHCHECK")[-1])]

    # PostgreSQL only with --profile postgres, and the bot does not need it otherwise.
    postgres = compose["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"]
    assert bot["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}
    assert "ports" not in postgres
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
