"""Nano Banana Pro: ``POST {base}/api/ai/nano-banana/generate``, one image per call.

The call is synchronous (the answer carries the finished image), so it gets the
long ``nanobanana_timeout`` and no polling. HTTP 500 is the documented "generation
failed": it is not sent again (each try can take minutes and may be billed).

How references travel follows seed 004 exactly: one image may be a multipart
upload (``image=@file``) or a JSON URL; several images only as a JSON array of
URLs (the seed shows no repeated ``image`` part). The plan's per-image limit
(2.5 MB) holds either way, so:

* one reference is uploaded when the operator chose ``upload`` transport, when
  it has no URL, or when its bytes exceed the limit, after
  ``ImageProcessor.fit_reference`` downscaled or re-encoded it under the limit;
  otherwise its URL is sent;
* several references go as URLs, and one without a URL or over the limit is
  refused before anything is sent or charged: the service would fetch it as it
  is, and the bot has nowhere to put a shrunk copy.

Choices made where the docs leave room:

* Default ``size`` is ``1k``: the cheapest tier and the fastest; members ask for
  2k/4k explicitly.
* No ``aspectRatio`` is sent unless asked for, so the service keeps its own
  default (and, for edits, can follow the reference). ``width``/``height`` are
  accepted and turned into the aspect ratio they match (within 5%); other pixel
  sizes are rejected naming the ratios.
* The API has no negative prompt, seed, model or extra options: asking for one
  is a ``ValidationError`` naming it, rather than silently dropping it or
  folding a negative prompt into the prompt (which can invert its meaning).
* ``safety_checker`` has no equivalent parameter; the service applies its own
  filtering, so the request proceeds either way.
* Prompts are capped at 4000 characters: ample for the detailed prompts the
  docs recommend, bounded for request size and logs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import aiohttp

from bot.config import Settings
from bot.errors import GenerationFailed, JobNotResumable, ValidationError
from bot.models import (
    GenerationRequest,
    Mode,
    OutputRef,
    Progress,
    ProgressCallback,
    ProviderOutput,
    ReferenceImage,
    ResumeHandle,
    Stage,
)
from bot.providers._http import REDACTED, HttpResponse, ProviderHttp, parse_retry_after
from bot.providers.base import ASPECT_RATIOS, Capabilities
from bot.providers.validation import (
    check_choice,
    check_common,
    check_int,
    check_options,
    nearest_aspect_ratio,
)

if TYPE_CHECKING:
    from bot.images import ImageProcessor

log = logging.getLogger(__name__)

NAME = "nanobanana"
DISPLAY_NAME = "Nano Banana Pro"
GENERATE_PATH = "/api/ai/nano-banana/generate"
MAX_PROMPT_LENGTH = 4000
ALL_SIZES: tuple[str, ...] = ("1k", "2k", "4k")
DEFAULT_SIZE = "1k"


def build_capabilities(settings: Settings) -> Capabilities:
    """What Nano Banana Pro can do with this bot's plan settings."""
    max_refs = settings.nanobanana_max_references
    modes = (Mode.TEXT, Mode.EDIT, Mode.BLEND) if max_refs >= 2 else (Mode.TEXT, Mode.EDIT)
    limits = {Mode.TEXT: (0, 0), Mode.EDIT: (1, 1)}
    if max_refs >= 2:
        limits[Mode.BLEND] = (2, max_refs)
    return Capabilities(
        provider=NAME,
        modes=modes,
        reference_limits=MappingProxyType(limits),
        # One image per call: samples above 1 are parallel calls (bot.jobs fans out).
        max_samples=4,
        one_image_per_call=True,
        takes_negative_prompt=False,
        seed_range=(0, 0),  # no seed parameter; validate() rejects one outright
        size_tiers=ALL_SIZES if settings.nanobanana_allow_4k else ALL_SIZES[:2],
        aspect_ratios=ASPECT_RATIOS,
        models=(),
        options=MappingProxyType({}),
        max_reference_bytes=settings.nanobanana_max_image_bytes,
    )


class NanoBananaProvider:
    """Nano Banana Pro behind the ``Provider`` protocol."""

    name = NAME
    display_name = DISPLAY_NAME
    max_prompt_length = MAX_PROMPT_LENGTH

    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, images: ImageProcessor
    ) -> None:
        key = settings.nanobanana_api_key
        if key is None or not key.get_secret_value():
            raise ValueError("NanoBananaProvider needs NANOBANANA_API_KEY")
        self._key = key
        self._settings = settings
        self._images = images
        self._url = str(settings.nanobanana_base_url).rstrip("/") + GENERATE_PATH
        self.capabilities = build_capabilities(settings)
        self._http = ProviderHttp(
            provider=NAME,
            display_name=DISPLAY_NAME,
            session=session,
            secret=key,
            connect_timeout=settings.http_connect_timeout,
            retry_attempts=settings.retry_attempts,
            backoff_max=settings.retry_backoff_max,
        )

    def __repr__(self) -> str:
        return f"NanoBananaProvider(url={self._url!r}, key={REDACTED})"

    # --- validation -----------------------------------------------------------
    def validate(self, request: GenerationRequest) -> GenerationRequest:
        unsupported = (
            ("negative_prompt", request.negative_prompt, "does not take a negative prompt"),
            ("seed", request.seed, "does not take a seed"),
            ("model", request.model, "has no model choice"),
        )
        for option, value, why in unsupported:
            if value is not None and value != "":
                raise ValidationError(option, f"{DISPLAY_NAME} {why}; remove {option}.")
        checked = check_common(
            self.capabilities,
            replace(request, negative_prompt=None),
            display_name=DISPLAY_NAME,
            max_prompt_length=MAX_PROMPT_LENGTH,
        )
        aspect = self._aspect_from_pixels(checked)
        size = self._check_size(checked.size)
        check_options(self.capabilities, checked.mode, checked.options)
        self._check_references(checked.references)
        # The default size stays None (cost_tier and the body read it as 1k) so a
        # request validated here can be re-validated by ModelsLab on failover.
        return replace(
            checked,
            size=None if checked.size is None else size,
            aspect_ratio=aspect,
            width=None,
            height=None,
            options=MappingProxyType({}),
        )

    def _aspect_from_pixels(self, request: GenerationRequest) -> str | None:
        """Width and height become the aspect ratio they describe: the API sizes by
        tier and ratio only. Pixel sizes come from members used to ModelsLab and
        from requests ModelsLab validated before a failover."""
        if request.width is None and request.height is None:
            return request.aspect_ratio
        if request.width is None or request.height is None:
            option = "height" if request.width is not None else "width"
            raise ValidationError(
                option,
                f"{DISPLAY_NAME} is sized by size and aspect_ratio; give both width and "
                "height, or an aspect_ratio.",
            )
        width = check_int("width", request.width, 1, 100_000)
        height = check_int("height", request.height, 1, 100_000)
        nearest = nearest_aspect_ratio(width, height, self.capabilities.aspect_ratios)
        if nearest is None or (request.aspect_ratio not in (None, nearest)):
            raise ValidationError(
                "aspect_ratio",
                f"{DISPLAY_NAME} is sized by size ({', '.join(self.capabilities.size_tiers)}) "
                f"and aspect_ratio ({', '.join(self.capabilities.aspect_ratios)}); "
                f"{width}×{height} matches none of them"
                + (f" or differs from {request.aspect_ratio}." if request.aspect_ratio else "."),
            )
        return nearest

    def _check_size(self, size: str | None) -> str:
        if size is None:
            return DEFAULT_SIZE
        value = check_choice("size", size, ALL_SIZES)
        if value not in self.capabilities.size_tiers:
            raise ValidationError(
                "size",
                f"size {value} needs a {DISPLAY_NAME} plan with 4K generation (Standard or "
                f"Pro); this bot's plan does not include it. Choose "
                f"{' or '.join(self.capabilities.size_tiers)}.",
            )
        return value

    def _check_references(self, refs: tuple[ReferenceImage, ...]) -> None:
        if len(refs) == 1:
            if not refs[0].data and not refs[0].url:
                raise ValidationError(
                    "references",
                    "The reference image has neither image data to upload nor a link; "
                    "attach the image again.",
                )
            return
        limit = self._settings.nanobanana_max_image_bytes
        for index, ref in enumerate(refs, start=1):
            if not ref.url:
                raise ValidationError(
                    "references",
                    f"Reference image {index} has no link: {DISPLAY_NAME} takes several "
                    "images only as links it downloads itself (one image can be uploaded). "
                    "Attach the images on Discord, or use just this one.",
                )
            if ref.data is not None and len(ref.data) > limit:
                raise ValidationError(
                    "references",
                    f"Reference image {index} is {_megabytes(len(ref.data))}; {DISPLAY_NAME} "
                    f"takes at most {_megabytes(limit)} per image, and with several images it "
                    "downloads each from its link as it is. Use a smaller image, or edit this "
                    "one on its own (the bot shrinks a single image to fit).",
                )

    def _uploads(self, refs: tuple[ReferenceImage, ...]) -> bool:
        """Whether the one reference goes as a multipart upload (see the module
        docstring); several references never do."""
        if len(refs) != 1:
            return False
        [ref] = refs
        if not ref.data:
            return False  # nothing to upload: the service fetches the link
        if not ref.url or self._settings.nanobanana_reference_transport == "upload":
            return True
        # A link to more than the limit would be refused: upload a fitted copy.
        return len(ref.data) > self._settings.nanobanana_max_image_bytes

    def cost_tier(self, request: GenerationRequest) -> str:
        return f"nbpro_{request.size or DEFAULT_SIZE}"

    # --- the call -------------------------------------------------------------
    def _json_body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": request.prompt, "size": request.size or DEFAULT_SIZE}
        if request.aspect_ratio:
            body["aspectRatio"] = request.aspect_ratio
        urls = [ref.url for ref in request.references]
        if len(urls) == 1:
            body["image"] = urls[0]
        elif urls:
            body["image"] = urls
        return body

    def _form(self, request: GenerationRequest, ref: ReferenceImage) -> aiohttp.FormData:
        assert ref.data is not None
        form = aiohttp.FormData()
        form.add_field("prompt", request.prompt)
        form.add_field("size", request.size or DEFAULT_SIZE)
        if request.aspect_ratio:
            form.add_field("aspectRatio", request.aspect_ratio)
        form.add_field(
            "image",
            ref.data,
            filename=_filename(ref, 1),
            content_type=ref.mime or "application/octet-stream",
        )
        return form

    async def resume(
        self, request: GenerationRequest, handle: ResumeHandle, on_progress: ProgressCallback
    ) -> ProviderOutput:
        # generate is one synchronous call: a restart loses its answer for good.
        raise JobNotResumable(
            "Nano Banana Pro was making your image when the bot restarted, and its answer "
            "cannot be fetched again, so nothing was charged. Please try again.",
            provider=self.name,
        )

    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback
    ) -> ProviderOutput:
        settings = self._settings
        headers = {"Authorization": f"Bearer {self._key.get_secret_value()}"}
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout_at(started + settings.job_deadline):
                if self._uploads(request.references):
                    fitted = await self._images.fit_reference(
                        request.references[0], settings.nanobanana_max_image_bytes
                    )

                    async def attempt() -> HttpResponse:
                        # A FormData is consumed by sending: build one per attempt.
                        return await self._http.post(
                            self._url,
                            form=self._form(request, fitted),
                            headers=headers,
                            time_limit=settings.nanobanana_timeout,
                        )
                else:
                    body = self._json_body(request)

                    async def attempt() -> HttpResponse:
                        return await self._http.post(
                            self._url,
                            json_body=body,
                            headers=headers,
                            time_limit=settings.nanobanana_timeout,
                        )

                await self._report(on_progress)

                async def call() -> ProviderOutput:
                    return self._interpret(await attempt())

                output = await self._http.with_retries(call, what="generate", retry_timeouts=False)
        except TimeoutError:
            raise self._http.deadline_exceeded(settings.job_deadline) from None
        return replace(output, generation_time=round(loop.time() - started, 3))

    async def _report(self, on_progress: ProgressCallback) -> None:
        try:
            await on_progress(Progress(stage=Stage.PROCESSING))
        except Exception:
            # A progress message failing (Discord hiccup) must not lose a paid job.
            log.warning("progress callback failed", exc_info=True)

    def _interpret(self, response: HttpResponse) -> ProviderOutput:
        data = response.data
        if response.status == 500:
            raise self._generation_failed(data)
        if not isinstance(data, dict):
            raise self._http.error_for_status_only(response)
        error = data.get("error")
        if error not in (None, "", False) or response.status >= 400:
            if isinstance(error, dict):
                error = error.get("message") or error
            retry_after = parse_retry_after(data.get("retry_after"))
            if retry_after is None:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise self._http.error_for(
                response.status, error or data.get("message") or "", retry_after=retry_after
            )
        images = data.get("images")
        if not isinstance(images, list) or not images:
            raise self._http.bad_response("success without images", status=response.status)
        outputs = tuple(self._output_ref(item, response.status) for item in images)
        model = data.get("model")
        job_id = data.get("id")
        return ProviderOutput(
            provider=NAME,
            outputs=outputs,
            model=model if isinstance(model, str) and model else None,
            provider_job_id=str(job_id) if job_id not in (None, "") else None,
        )

    def _generation_failed(self, data: Any) -> GenerationFailed:
        """Seed 004: HTTP 500 is "Generation failed". Not retryable: another try
        may take minutes again and may be billed again."""
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            error = error.get("message") or error
        text = self._http.sanitise(error) if error not in (None, "", False) else ""
        log.warning("%s reported a failed generation (HTTP 500): %s", NAME, text or "no message")
        detail = f": {text}" if text else ""
        return GenerationFailed(
            f"{DISPLAY_NAME} could not make this image{detail}. Nothing was charged; "
            "try again, or change the prompt or reference images.",
            provider=NAME,
            status=500,
            retryable=False,
        )

    def _output_ref(self, item: Any, status: int) -> OutputRef:
        url = item.get("url") if isinstance(item, dict) else item
        if isinstance(url, str) and url.strip().startswith(("https://", "http://")):
            return OutputRef(url=url.strip())
        encoded = item.get("b64_json") if isinstance(item, dict) else None
        if isinstance(encoded, str) and encoded:
            try:
                return OutputRef(data=base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError):
                pass
        raise self._http.bad_response("image entry without a usable url", status=status)


def _megabytes(size: int) -> str:
    # Decimal megabytes, as the plan table states its 2.5 MB limit.
    return f"{size / 1_000_000:.1f} MB"


_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def _filename(ref: ReferenceImage, index: int) -> str:
    """A safe upload name whose extension matches the (possibly re-encoded) bytes."""
    ext = _EXTENSIONS.get(ref.mime or "", "bin")
    stem = "".join(ch for ch in ref.filename.rsplit(".", 1)[0] if ch.isalnum() or ch in "-_")
    return f"{stem[:40] or 'image'}-{index}.{ext}"
