"""``python -m bot generate``: the job pipeline with a Delivery that writes files.

It runs exactly the path the Discord bot runs (validation, ledger, provider,
download), so an operator can test keys and settings without Discord.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.cli_text import plain_text
from bot.compose import compose
from bot.config import PROVIDER_NAMES, Settings
from bot.errors import (
    BotError,
    ConfigError,
    ImageError,
    ProviderError,
    ProviderNotFound,
    ValidationError,
)
from bot.images import ImageProcessor, download
from bot.images.downloads import RefusedHost
from bot.jobs import Job, JobResult
from bot.jobstore import JobStore, request_to_dict
from bot.models import GenerationRequest, Mode, Progress, ReferenceImage, Requester, Stage
from bot.providers.base import ASPECT_RATIOS
from bot.quota.base import Ledger
from bot.styles import StyleStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def add_generate_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "generate",
        help="make images from the shell through the same pipeline as the bot",
        description="Generate images and write them, with result.json, into --out.",
    )
    parser.add_argument("--mode", choices=[m.value for m in Mode], required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="reference image (repeat for blend); an https URL or a local file",
    )
    parser.add_argument("--provider", choices=PROVIDER_NAMES)
    parser.add_argument("--model", help="ModelsLab model_id for text mode")
    parser.add_argument("--negative-prompt")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--aspect-ratio", choices=ASPECT_RATIOS)
    parser.add_argument("--size", choices=("1k", "2k", "4k"))
    parser.add_argument(
        "--style",
        metavar="NAME",
        help="a built-in style or one of --guild's (as /style list shows); --prompt may "
        "also carry parameters such as --ar 16:9 --no trees --style NAME",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a provider option by its API name, e.g. guidance_scale=7.5 (repeatable)",
    )
    parser.add_argument("--guild", default="local", help="guild id whose quota pays")
    parser.add_argument("--user", default="local", help="user id whose allowance pays")
    parser.add_argument("--out", required=True, type=Path, help="directory for the images")


class UsageError(Exception):
    pass


def _options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--option must look like NAME=VALUE (got {pair!r})")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options[name.strip()] = value
    return options


def _check_usage(args: argparse.Namespace) -> None:
    if (args.width is None) != (args.height is None):
        raise UsageError("--width and --height go together")
    if args.width is not None and args.aspect_ratio is not None:
        raise UsageError("give either --width/--height or --aspect-ratio, not both")


def _prepare_out(out: Path) -> None:
    """Create --out and write in it before anything is paid for: a typo'd or
    read-only --out must not cost a generation whose images have nowhere to go."""
    where = out.absolute()
    if where.exists() and not where.is_dir():
        raise UsageError(f"--out {where} is a file; give a directory")
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise UsageError(f"cannot write to --out {where}: {reason}") from None


def _fetch_failure(source: str, error: ProviderError, settings: Settings) -> UsageError:
    """A reference URL that cannot be fetched is the --image argument's fault, told
    as such (the download helper speaks of "the provider's result")."""
    if isinstance(error, ProviderNotFound):
        reason = f"the server answered {error.status or 404}: no such file"
    elif error.status is not None:
        reason = f"the server answered HTTP {error.status}"
    elif "too long" in error.user_message:
        reason = f"no complete answer within DOWNLOAD_TIMEOUT ({settings.download_timeout:g} s)"
    elif "larger than" in error.user_message:
        reason = f"it is larger than INPUT_MAX_BYTES ({settings.input_max_bytes} bytes)"
    elif "connection failed" in error.user_message:
        cause = error.__cause__
        detail = f" ({cause})" if cause is not None and str(cause) else ""
        reason = f"cannot connect{detail}"
    elif "redirects" in error.user_message:
        reason = "it redirects too many times"
    else:
        reason = "only https:// links (or local files) can be used"
    return UsageError(f"cannot fetch --image {source}: {reason}")


async def _load_reference(
    source: str, settings: Settings, images: ImageProcessor, session: Any
) -> ReferenceImage:
    if source.startswith(("http://", "https://")):
        try:
            data = await download(
                session,
                source,
                max_bytes=settings.input_max_bytes,
                timeout=settings.download_timeout,
                allow_loopback=settings.download_allow_loopback,
                provider="reference",
            )
        except ProviderError as error:
            raise _fetch_failure(source, error, settings) from None
        return await images.load_reference(data, filename=source.rsplit("/", 1)[-1], url=source)
    path = Path(source)
    try:
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        if size > settings.input_max_bytes:
            raise ImageError(
                f"{path.name} is {size / 1e6:.1f} MB; the most allowed is "
                f"{settings.input_max_bytes / 1e6:.1f} MB."
            )
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise UsageError(f"cannot read --image {source}: {exc.strerror}") from None
    return await images.load_reference(data, filename=path.name)


class FileDelivery:
    """Writes the images and result.json into a directory; progress goes to stderr."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.error: BotError | None = None
        self.files: list[str] = []
        self._last_line = ""

    async def progress(self, job: Job, progress: Progress) -> None:
        line = _describe(progress)
        if line != self._last_line:
            self._last_line = line
            print(line, file=sys.stderr)

    async def deliver(self, job: Job, result: JobResult) -> None:
        names = [
            f"image_{index}.{_EXTENSIONS.get(image.mime, 'png')}"
            for index, image in enumerate(result.images, start=1)
        ]
        document = {
            "job_id": job.id,
            "request": request_to_dict(result.request),
            "provider": result.provider,
            "model": result.model,
            "seed": result.seed,
            "provider_job_id": result.provider_job_id,
            "nsfw_detected": result.nsfw_detected,
            "timing": {
                "elapsed_seconds": round(result.elapsed, 3),
                "provider_generation_seconds": result.generation_time,
            },
            "credits": {"charged": result.credits_charged},
            "files": [
                {"name": name, "mime": image.mime, "width": image.width, "height": image.height}
                for name, image in zip(names, result.images, strict=True)
            ],
        }
        await asyncio.to_thread(self._write, names, result, document)
        self.files = names

    def _write(self, names: list[str], result: JobResult, document: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, image in zip(names, result.images, strict=True):
            if image.data is None:
                assert image.path is not None  # kept on disk under DATA_DIR instead
                shutil.copyfile(image.path, self.out_dir / name)
            else:
                (self.out_dir / name).write_bytes(image.data)
        # Written last and atomically: its presence means the images are complete.
        tmp = self.out_dir / f".result.json.{os.getpid()}"
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.out_dir / "result.json")

    async def fail(self, job: Job | None, error: BotError) -> None:
        self.error = error


def _describe(progress: Progress) -> str:
    if progress.stage is Stage.QUEUED and progress.queue_position is not None:
        return f"queued: position {progress.queue_position}"
    if progress.stage is Stage.PROCESSING and progress.eta_seconds is not None:
        return f"processing: about {progress.eta_seconds:.0f} s left"
    return progress.stage.value


@contextlib.asynccontextmanager
async def _ledger(settings: Settings) -> AsyncIterator[Ledger]:
    from bot.quota import open_ledger

    async with open_ledger(settings) as ledger:
        yield ledger


def _require_provider(args: argparse.Namespace, settings: Settings) -> None:
    configured = settings.configured_providers()
    if args.provider is not None and args.provider not in configured:
        raise ConfigError(
            f"Missing settings:\n  {args.provider.upper()}_API_KEY: not set; "
            f"set it to use --provider {args.provider}"
        )
    if not configured:
        raise ConfigError(
            "Missing settings:\n  MODELSLAB_API_KEY or NANOBANANA_API_KEY: neither is set; "
            "set at least one provider's API key"
        )


async def run_generate(args: argparse.Namespace, settings: Settings) -> int:
    from bot.runtime import open_runtime

    try:
        _check_usage(args)
        options = _options(args.option)
        _prepare_out(args.out)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    _require_provider(args, settings)

    delivery = FileDelivery(args.out)
    async with _ledger(settings) as ledger, open_runtime(settings, ledger) as runtime:
        try:
            references = tuple(
                await asyncio.gather(
                    *(
                        _load_reference(src, settings, runtime.images, runtime.session)
                        for src in args.image
                    )
                )
            )
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except BotError as error:
            print(f"error: {plain_text(error.user_message)}", file=sys.stderr)
            return EXIT_USAGE if isinstance(error, ImageError) else EXIT_FAILED
        request = GenerationRequest(
            mode=Mode(args.mode),
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            references=references,
            provider=args.provider,
            model=args.model,
            samples=args.samples,
            seed=args.seed,
            width=args.width,
            height=args.height,
            aspect_ratio=args.aspect_ratio,
            size=args.size,
            options=options,
            requester=Requester(guild_id=str(args.guild), user_id=str(args.user)),
            idempotency_key=f"cli-{uuid.uuid4().hex}",
        )
        try:
            # The same prompt parameters and styles as in Discord (bot.compose).
            async with JobStore.open(settings) as jobs:
                request = await compose(
                    request,
                    pipeline=runtime.pipeline,
                    styles=StyleStore(jobs.database),
                    style=args.style,
                )
        except BotError as error:
            print(f"error: {plain_text(error.user_message)}", file=sys.stderr)
            return EXIT_USAGE if isinstance(error, ValidationError) else EXIT_FAILED
        outcome = await runtime.pipeline.run(request, delivery)
    if outcome.ok:
        for name in delivery.files:
            print(args.out / name)
        return EXIT_OK
    failure = outcome.error or delivery.error
    print(f"error: {_failure_message(failure, settings)}", file=sys.stderr)
    usage = ValidationError | ImageError | RefusedHost
    return EXIT_USAGE if isinstance(failure, usage) else EXIT_FAILED


def _failure_message(failure: BotError | None, settings: Settings) -> str:
    """The member's message, reworded where it speaks of Discord."""
    if failure is None:
        return "generation failed"
    if isinstance(failure, RefusedHost):
        return (
            f"{failure.provider} returned its result on {failure.host}, a host "
            "DOWNLOAD_ALLOWED_HOSTS does not list; add it to DOWNLOAD_ALLOWED_HOSTS if you "
            "trust it (nothing was charged)"
        )
    return plain_text(failure.user_message)
