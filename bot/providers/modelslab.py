"""ModelsLab enterprise API: ``text2img``, ``nano_banana/img2img``, ``nano_banana/multi_ref``.

Every call is a JSON POST with the key in the body, so bodies are only ever
logged through ``redact_body``. A job may be queued (``status: processing``); it
is then polled until it succeeds, fails, or the ``job_deadline`` passes. A poll
carries the key too, so it goes to the ``fetch_result`` URL only when that is
https on the configured API host itself (plain http only to a loopback API host
under ``DOWNLOAD_ALLOW_LOOPBACK``, for tests); any other ``fetch_result`` is
ignored for the documented fetch endpoint of the job's kind.

A success names its images in ``output`` (a list, or now and then one string);
when that is empty, ``proxy_links`` and then ``future_links`` carry them.

Choices made where the docs leave room:

* text2img sizes: 64 to 1024 in steps of 8 (the API's stated maximum is 1024;
  smaller than 64 or off the latent grid of 8 is rejected rather than silently
  changed), default 512 as documented.
* nano_banana sizes: 1024 to 2048 in steps of 32 as documented. img2img defaults
  to the reference's size fitted into that range (the API's own default);
  multi_ref defaults to 1024×1024 instead of the API's 2048×2048: a quarter of
  the pixels makes it faster and the result fits Discord's upload limits
  without re-encoding. Members can still ask for up to 2048.
* An ``aspect_ratio`` puts the long side at the mode's maximum (16:9 is
  1024×576 on text2img and 2048×1152 on nano_banana).
* ``size`` tiers map to the largest documented dimensions: ``1k`` puts the long
  side at 1024 (text2img's maximum), ``2k`` at 2048 (nano_banana's maximum, so
  edit and blend only); ``4k`` is beyond every endpoint. Where a ratio would push
  the short side under nano_banana's 1024 minimum, the short side stays at 1024.
  The price stays the mode's: the cost table has no size tiers for ModelsLab.
* Prompts are capped at 2000 characters: far beyond what the models attend to,
  short enough to keep request bodies and logs small.
* ``safety_checker`` only exists on text2img; nano_banana has no such parameter
  and runs its own filtering, so a request with it set simply proceeds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

import aiohttp

from bot.config import Settings
from bot.errors import ValidationError
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
from bot.providers._http import (
    REDACTED,
    HttpResponse,
    ProviderHttp,
    as_bool,
    as_float,
    as_int,
    parse_retry_after,
)
from bot.providers.base import ASPECT_RATIOS, Capabilities, OptionSpec, SizeRule
from bot.providers.validation import (
    check_choice,
    check_common,
    check_dimension,
    check_float,
    check_options,
    check_text,
    check_url,
    fit_size,
    size_for_aspect,
)

log = logging.getLogger(__name__)

NAME = "modelslab"
DISPLAY_NAME = "ModelsLab"
MAX_PROMPT_LENGTH = 2000
SEED_RANGE = (0, 4_294_967_295)
MAX_SAMPLES = 4

TEXT2IMG_SIZE = SizeRule(minimum=64, maximum=1024, multiple_of=8, default=512)
NANO_SIZE = SizeRule(minimum=1024, maximum=2048, multiple_of=32, default=1024)

SCHEDULERS: tuple[str, ...] = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DDIMInverseScheduler",
    "DEISMultistepScheduler",
    "IPNDMScheduler",
    "KarrasVeScheduler",
    "ScoreSdeVeScheduler",
    "LCMScheduler",
)
SAFETY_CHECKER_TYPES: tuple[str, ...] = ("blur", "sensitive_content_text", "pixelate", "black")
INFERENCE_STEPS: tuple[str, ...] = ("21", "31", "41")
# The long side of each size tier, in pixels.
SIZE_PIXELS: Mapping[str, int] = MappingProxyType({"1k": 1024, "2k": 2048})
MODE_SIZES: Mapping[Mode, tuple[str, ...]] = MappingProxyType(
    {Mode.TEXT: ("1k",), Mode.EDIT: ("1k", "2k"), Mode.BLEND: ("1k", "2k")}
)

ENDPOINTS: Mapping[Mode, str] = MappingProxyType(
    {Mode.TEXT: "text2img", Mode.EDIT: "nano_banana/img2img", Mode.BLEND: "nano_banana/multi_ref"}
)
COST_TIERS: Mapping[Mode, str] = MappingProxyType(
    {
        Mode.TEXT: "text2img",
        Mode.EDIT: "nano_banana_img2img",
        Mode.BLEND: "nano_banana_multi_ref",
    }
)

_TEXT = frozenset({Mode.TEXT})
_NANO = frozenset({Mode.EDIT, Mode.BLEND})
_ALL = frozenset(Mode)


def _flag(name: str, description: str, modes: frozenset[Mode]) -> OptionSpec:
    return OptionSpec(name, "flag", description, modes=modes)


OPTION_SPECS: tuple[OptionSpec, ...] = (
    # text2img
    OptionSpec(
        "num_inference_steps",
        "choice",
        "denoising steps",
        choices=INFERENCE_STEPS,
        modes=_TEXT,
    ),
    OptionSpec("guidance_scale", "float", "how closely to follow the prompt", 1, 20, modes=_TEXT),
    OptionSpec("clip_skip", "int", "CLIP layers to skip", 1, 8, modes=_TEXT),
    OptionSpec("scheduler", "choice", "sampling scheduler", choices=SCHEDULERS, modes=_TEXT),
    OptionSpec(
        "safety_checker_type",
        "choice",
        "what to do to an NSFW image",
        choices=SAFETY_CHECKER_TYPES,
        modes=_TEXT,
    ),
    OptionSpec(
        "algorithm_type",
        "choice",
        "DPMSolverMultistepScheduler algorithm",
        choices=("dpmsolver+++",),
        modes=_TEXT,
    ),
    OptionSpec("lora_model", "text", "comma-separated LoRA model ids", modes=_TEXT),
    OptionSpec(
        "lora_strength",
        "text",
        "comma-separated strengths 0.1 to 1, one per LoRA model",
        0.1,
        1,
        modes=_TEXT,
    ),
    OptionSpec("embeddings_model", "text", "embeddings model id", modes=_TEXT),
    OptionSpec("vae", "text", "custom VAE id", modes=_TEXT),
    _flag("enhance_prompt", "let ModelsLab enhance the prompt", _TEXT),
    _flag("upscale", "upscale the result 2x", _TEXT),
    _flag("panorama", "make a panorama", _TEXT),
    _flag("self_attention", "higher quality, slower", _TEXT),
    _flag("highres_fix", "high-resolution fix", _TEXT),
    _flag("tomesd", "token merging (faster)", _TEXT),
    _flag("use_karras_sigmas", "Karras sigmas", _TEXT),
    _flag("loadbalancer", "spread over the account's servers", _TEXT),
    # nano_banana
    OptionSpec("noise_scale_start", "float", "starting noise scale", 0, 30, modes=_NANO),
    OptionSpec("noise_scale_end", "float", "ending noise scale", 0, 30, modes=_NANO),
    OptionSpec("noise_clip_std", "float", "noise clip standard deviation", 0, 10, modes=_NANO),
    _flag("watermark", "add a watermark", _NANO),
    _flag(
        "keep_original_aspect",
        "keep the reference's aspect ratio",
        frozenset({Mode.EDIT}),
    ),
    # every endpoint
    _flag("base64", "return images as base64", _ALL),
    _flag("temp", "store in a temporary directory", _ALL),
    OptionSpec("webhook", "text", "https URL to call when done", modes=_ALL),
    OptionSpec("track_id", "text", "id echoed to the webhook", modes=_ALL),
)


def build_capabilities(settings: Settings) -> Capabilities:
    """What ModelsLab can do with this bot's settings (no key needed: /help uses it)."""
    models = tuple(dict.fromkeys([settings.modelslab_model_id, *settings.modelslab_models]))
    return Capabilities(
        provider=NAME,
        modes=(Mode.TEXT, Mode.EDIT, Mode.BLEND),
        reference_limits=MappingProxyType(
            {
                Mode.TEXT: (0, 0),
                Mode.EDIT: (1, 1),
                Mode.BLEND: (2, settings.modelslab_max_references),
            }
        ),
        max_samples=MAX_SAMPLES,
        seed_range=SEED_RANGE,
        pixel_sizes=MappingProxyType(
            {Mode.TEXT: TEXT2IMG_SIZE, Mode.EDIT: NANO_SIZE, Mode.BLEND: NANO_SIZE}
        ),
        aspect_ratios=ASPECT_RATIOS,
        models=models,
        options=MappingProxyType({spec.name: spec for spec in OPTION_SPECS}),
        max_reference_bytes=None,  # references go by URL only
        size_tiers=tuple(SIZE_PIXELS),
        mode_size_tiers=MODE_SIZES,
    )


def _check_lora_model(value: Any) -> str:
    text = check_text("lora_model", value)
    parts = [part.strip() for part in text.split(",")]
    if any(not part or " " in part for part in parts):
        raise ValidationError(
            "lora_model",
            "lora_model must be LoRA model ids separated by commas, e.g. "
            f"more_details,animie (got {text[:60]}).",
        )
    return ",".join(parts)


def _check_lora_strength(value: Any) -> str:
    raw = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationError(
            "lora_strength",
            "lora_strength must be numbers 0.1 to 1 separated by commas (got nothing).",
        )
    strengths = []
    for part in raw.split(","):
        try:
            strengths.append(check_float("lora_strength", part, 0.1, 1.0))
        except ValidationError:
            raise ValidationError(
                "lora_strength",
                "lora_strength must be numbers 0.1 to 1 separated by commas, one per "
                f"lora_model (got {raw.strip()[:60]}).",
            ) from None
    return ",".join(f"{s:g}" for s in strengths)


def _check_webhook(value: Any) -> str:
    return check_url("webhook", value)


def _check_references(refs: tuple[ReferenceImage, ...]) -> None:
    for index, ref in enumerate(refs, start=1):
        parts = urlsplit(ref.url) if ref.url else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            which = f"Reference image {index}" if len(refs) > 1 else "The reference image"
            raise ValidationError(
                "references",
                f"{which} has no link ModelsLab can download: ModelsLab takes reference "
                "images by URL only. Attach the image on Discord, give an https:// URL, "
                "or choose Nano Banana Pro, which takes uploads.",
            )


@dataclass(frozen=True, slots=True)
class _Queued:
    job_id: str | None
    eta: float | None
    fetch_url: str | None


class ModelsLabProvider:
    """The ModelsLab enterprise API behind the ``Provider`` protocol."""

    name = NAME
    display_name = DISPLAY_NAME
    max_prompt_length = MAX_PROMPT_LENGTH

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        key = settings.modelslab_api_key
        if key is None or not key.get_secret_value():
            raise ValueError("ModelsLabProvider needs MODELSLAB_API_KEY")
        self._key = key
        self._settings = settings
        self._base = str(settings.modelslab_base_url).rstrip("/")
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
        return f"ModelsLabProvider(base_url={self._base!r}, key={REDACTED})"

    # --- validation -----------------------------------------------------------
    def validate(self, request: GenerationRequest) -> GenerationRequest:
        caps = self.capabilities
        checked = check_common(
            caps, request, display_name=DISPLAY_NAME, max_prompt_length=MAX_PROMPT_LENGTH
        )
        mode = checked.mode
        _check_references(checked.references)
        model = self._check_model(mode, checked.model)
        width, height = self._check_size(checked)
        options = check_options(
            caps,
            mode,
            checked.options,
            custom={
                "lora_model": _check_lora_model,
                "lora_strength": _check_lora_strength,
                "webhook": _check_webhook,
            },
        )
        if "lora_strength" in options:
            if "lora_model" not in options:
                raise ValidationError(
                    "lora_strength", "lora_strength needs lora_model: give the LoRA ids too."
                )
            models = options["lora_model"].count(",") + 1
            strengths = options["lora_strength"].count(",") + 1
            if models != strengths:
                raise ValidationError(
                    "lora_strength",
                    f"lora_strength must give one strength per lora_model "
                    f"({models} model(s), {strengths} strength(s)).",
                )
        return replace(
            checked,
            model=model,
            width=width,
            height=height,
            options=MappingProxyType(options),
        )

    def _check_model(self, mode: Mode, model: str | None) -> str | None:
        if mode is not Mode.TEXT:
            if model is not None:
                raise ValidationError(
                    "model",
                    "model can only be chosen for text to image on ModelsLab; "
                    "edit and blend always use nano_banana.",
                )
            return None
        if model is None:
            return self._settings.modelslab_model_id
        return check_choice("model", model.strip(), self.capabilities.models)

    def _check_size(self, request: GenerationRequest) -> tuple[int, int]:
        rule = self.capabilities.pixel_sizes[request.mode]
        if request.size is not None:
            return self._tier_size(request, rule)
        given_w = None if request.width is None else check_dimension("width", request.width, rule)
        given_h = (
            None if request.height is None else check_dimension("height", request.height, rule)
        )
        if request.aspect_ratio is not None:
            width, height = size_for_aspect(request.aspect_ratio, rule)
            # Equal values are what validate() itself fills in: re-validating a
            # validated request must succeed.
            if (given_w is not None and given_w != width) or (
                given_h is not None and given_h != height
            ):
                raise ValidationError(
                    "aspect_ratio",
                    "Give either aspect_ratio or width and height, not both "
                    f"(aspect_ratio {request.aspect_ratio} means {width}×{height}).",
                )
            return width, height
        default_w, default_h = self._default_size(request, rule)
        return (given_w or default_w), (given_h or default_h)

    def _tier_size(self, request: GenerationRequest, rule: SizeRule) -> tuple[int, int]:
        """Pixels for a size tier: the long side at the tier, in the aspect ratio
        asked for, else the reference's (edit), else square."""
        tiers = self.capabilities.sizes_for(request.mode)
        size = check_choice("size", request.size, ("1k", "2k", "4k"))
        if size not in tiers:
            where = "text to image" if request.mode is Mode.TEXT else request.mode.value
            largest = max(rule.maximum, 0)
            raise ValidationError(
                "size",
                f"size {size} is not available for {where} on ModelsLab (at most "
                f"{largest}×{largest}); choose {' or '.join(tiers)}"
                + (", or Nano Banana Pro for 2k and 4k." if size != "1k" else "."),
            )
        long_side = SIZE_PIXELS[size]
        parts: tuple[int, int] = (1, 1)
        if request.aspect_ratio is not None:
            w_part, h_part = (int(p) for p in request.aspect_ratio.split(":"))
            parts = (w_part, h_part)
        elif request.mode is Mode.EDIT and request.references:
            ref = request.references[0]
            if ref.width and ref.height:
                parts = (ref.width, ref.height)
        scale = long_side / max(parts)
        width, height = fit_size(round(parts[0] * scale), round(parts[1] * scale), rule)
        # Equal values are what validate() itself fills in: re-validating a
        # validated request must succeed.
        if (request.width not in (None, width)) or (request.height not in (None, height)):
            raise ValidationError(
                "size",
                f"Give either size or width and height, not both (size {size} means "
                f"{width}×{height} here).",
            )
        return width, height

    @staticmethod
    def _default_size(request: GenerationRequest, rule: SizeRule) -> tuple[int, int]:
        fallback = rule.default or rule.minimum
        if request.mode is Mode.EDIT and request.references:
            ref = request.references[0]
            if ref.width and ref.height:
                return fit_size(ref.width, ref.height, rule)
        return fallback, fallback

    def cost_tier(self, request: GenerationRequest) -> str:
        return COST_TIERS[request.mode]

    # --- the call -------------------------------------------------------------
    def build_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body for a validated request; the key is read from its
        SecretStr only here, and the result must never be logged unredacted."""
        options = dict(request.options)
        if "num_inference_steps" in options:
            options["num_inference_steps"] = int(options["num_inference_steps"])
        body: dict[str, Any] = {"key": self._key.get_secret_value()}
        if request.mode is Mode.TEXT:
            body["model_id"] = request.model
        body["prompt"] = request.prompt
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        if request.mode is Mode.EDIT:
            body["ref_image"] = request.references[0].url
        elif request.mode is Mode.BLEND:
            body["ref_image"] = [ref.url for ref in request.references]
        body["width"] = request.width
        body["height"] = request.height
        body["samples"] = request.samples
        if request.mode is Mode.TEXT:
            body["seed"] = request.seed  # null asks for a random seed
            if request.safety_checker is not None:
                body["safety_checker"] = "yes" if request.safety_checker else "no"
        elif request.seed is not None:
            body["seed"] = request.seed  # omitted: random, same as the API's 0
        body.update(options)
        return body

    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback
    ) -> ProviderOutput:
        body = self.build_body(request)
        url = f"{self._base}/{ENDPOINTS[request.mode]}"
        timeout = self._settings.request_timeout
        deadline = self._settings.job_deadline
        loop = asyncio.get_running_loop()
        started = loop.time()
        job_id: str | None = None
        try:
            async with asyncio.timeout_at(started + deadline):
                result = await self._http.with_retries(
                    lambda: self._call(url, body, timeout), what="submit", retry_timeouts=False
                )
                if isinstance(result, ProviderOutput):
                    return self._finish(result, request)
                job_id = result.job_id
                output = await self._poll(request, result, on_progress)
                return self._finish(output, request)
        except TimeoutError:
            raise self._http.deadline_exceeded(deadline, job_id) from None

    async def resume(
        self, request: GenerationRequest, handle: ResumeHandle, on_progress: ProgressCallback
    ) -> ProviderOutput:
        """Poll a job submitted before a restart; the caller bounds the time."""
        queued = _Queued(job_id=handle.job_id, eta=None, fetch_url=handle.fetch_url)
        output = await self._poll(request, queued, on_progress)
        return self._finish(output, request)

    async def _poll(
        self, request: GenerationRequest, queued: _Queued, on_progress: ProgressCallback
    ) -> ProviderOutput:
        settings = self._settings
        fetch_url, fetch_body = self._fetch_target(request.mode, queued)
        await self._report(on_progress, queued)
        delay = min(max(queued.eta or 0.0, settings.poll_initial), settings.poll_max)
        polls = 0
        while True:
            await asyncio.sleep(delay)
            polls += 1
            result = await self._http.with_retries(
                lambda: self._call(fetch_url, fetch_body, settings.request_timeout),
                what=f"poll {polls}",
                retry_timeouts=True,  # a fetch changes nothing on the provider
            )
            if isinstance(result, ProviderOutput):
                return result
            queued = _Queued(queued.job_id or result.job_id, result.eta, queued.fetch_url)
            await self._report(on_progress, queued)
            # Grow the wait so a long job costs few calls; wait at least the
            # provider's fresh estimate, never longer than poll_max.
            delay = min(settings.poll_max, max(delay * 1.5, result.eta or 0.0))

    def _fetch_target(self, mode: Mode, queued: _Queued) -> tuple[str, dict[str, Any]]:
        key = self._key.get_secret_value()
        if queued.fetch_url and self._trusted_fetch_url(queued.fetch_url):
            return queued.fetch_url, {"key": key}
        if queued.fetch_url:
            log.warning(
                "%s: ignoring fetch_result off the API host (%r); polling the documented "
                "fetch endpoint instead",
                NAME,
                urlsplit(queued.fetch_url).hostname,
            )
        if queued.job_id is None:
            raise self._http.bad_response("queued job without id or fetch_result")
        if mode is Mode.TEXT:
            return f"{self._base}/fetch", {"key": key, "request_id": queued.job_id}
        return f"{self._base}/nano_banana/fetch/{quote(queued.job_id, safe='')}", {"key": key}

    def _trusted_fetch_url(self, url: str) -> bool:
        """The poll carries the key: only https to the configured API host (and
        port), or plain http to a loopback API host under the test setting."""
        try:
            parts = urlsplit(url)
            base = urlsplit(self._base)
            port, base_port = _port(parts), _port(base)
        except ValueError:
            return False
        host = (parts.hostname or "").rstrip(".")
        if not host or parts.username is not None or parts.password is not None:
            return False
        if host != (base.hostname or "").rstrip(".") or port != base_port:
            return False
        if parts.scheme == "https":
            return True
        return (
            parts.scheme == "http" and self._settings.download_allow_loopback and _is_loopback(host)
        )

    async def _report(self, on_progress: ProgressCallback, queued: _Queued) -> None:
        progress = Progress(
            stage=Stage.PROCESSING,
            eta_seconds=queued.eta,
            provider_job_id=queued.job_id,
            provider_fetch_url=queued.fetch_url,
        )
        try:
            await on_progress(progress)
        except Exception:
            # A progress message failing (Discord hiccup) must not lose a paid job.
            log.warning("progress callback failed", exc_info=True)

    async def _call(
        self, url: str, body: Mapping[str, Any], time_limit: float
    ) -> ProviderOutput | _Queued:
        response = await self._http.post(url, json_body=body, time_limit=time_limit)
        return self._interpret(response)

    def _interpret(self, response: HttpResponse) -> ProviderOutput | _Queued:
        data = response.data
        if not isinstance(data, dict):
            raise self._http.error_for_status_only(response)
        word = data.get("status")
        word = word.strip().casefold() if isinstance(word, str) else None
        if word == "success":
            return self._success(data, response.status)
        if word in ("processing", "queued", "pending"):
            job_id = data.get("id")
            fetch_url = data.get("fetch_result")
            return _Queued(
                job_id=str(job_id) if job_id not in (None, "") else None,
                eta=as_float(data.get("eta")),
                fetch_url=fetch_url if isinstance(fetch_url, str) and fetch_url else None,
            )
        message = _message_of(data)
        retry_after = parse_retry_after(data.get("retry_after"))
        if retry_after is None:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if word in ("error", "failed"):
            raise self._http.error_for(
                response.status, message, retry_after=retry_after, failed=word == "failed"
            )
        if response.status >= 400:
            raise self._http.error_for(response.status, message, retry_after=retry_after)
        raise self._http.bad_response(
            f"unknown status {self._http.sanitise(word, limit=40)!r}", status=response.status
        )

    def _success(self, data: dict[str, Any], status: int) -> ProviderOutput:
        raw = _links(data.get("output")) or _links(data.get("proxy_links"))
        raw = raw or _links(data.get("future_links"))
        if not raw:
            raise self._http.bad_response("success without output", status=status)
        outputs = tuple(self._output_ref(item, status) for item in raw)
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        assert isinstance(meta, dict)
        job_id = data.get("id")
        model = meta.get("model_id")
        return ProviderOutput(
            provider=NAME,
            outputs=outputs,
            model=model if isinstance(model, str) and model else None,
            seed=as_int(meta.get("seed")),
            provider_job_id=str(job_id) if job_id not in (None, "") else None,
            generation_time=as_float(data.get("generationTime")),
            nsfw_detected=as_bool(data.get("nsfw_content_detected")),
        )

    def _output_ref(self, item: Any, status: int) -> OutputRef:
        if not isinstance(item, str) or not item.strip():
            raise self._http.bad_response("output entry is not text", status=status)
        text = item.strip()
        if text.startswith(("https://", "http://")):
            # With base64 "yes" this may be a link to a .base64 file: the
            # downloader decodes those.
            return OutputRef(url=text)
        return OutputRef(data=self._decode_base64(text, status))

    def _decode_base64(self, text: str, status: int) -> bytes:
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise self._http.bad_response(
                "output is neither a URL nor base64", status=status
            ) from None
        if not data:
            raise self._http.bad_response("empty base64 output", status=status)
        return data

    @staticmethod
    def _finish(output: ProviderOutput, request: GenerationRequest) -> ProviderOutput:
        return replace(
            output,
            model=output.model or request.model or "nano_banana",
            seed=output.seed if output.seed is not None else request.seed,
        )


def _links(value: Any) -> list[Any]:
    """A list of output entries from a list, one string, or nothing."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return value
    return []


def _port(parts: SplitResult) -> int | None:
    port: int | None = parts.port  # raises ValueError when out of range
    if port is not None:
        return port
    return {"https": 443, "http": 80}.get(parts.scheme)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _message_of(data: Mapping[str, Any]) -> Any:
    # Older payloads spell it "messege"; some errors only say "error".
    for key in ("message", "messege", "error", "errors"):
        value = data.get(key)
        if value not in (None, ""):
            return value
    return ""
