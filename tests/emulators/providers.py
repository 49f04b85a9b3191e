"""A loopback stand-in for the ModelsLab enterprise API and Nano Banana Pro.

One aiohttp app on 127.0.0.1 answers both APIs the way their documents describe
(see /work/shared/provider-apis.md), serves the generated images and test
reference images, records every request, and lets a test script failures per
endpoint::

    async with ProviderEmulator() as emu:
        emu.script("text2img", Processing(polls=2), RateLimited())
        client = ModelsLabClient(base_url=emu.modelslab_base_url, key=emu.modelslab_key)
        ...
        assert emu.requests_to("fetch")[0].json == {"key": "ml-test-key"}

Scripted behaviours are consumed first-in first-out, one per request to that
endpoint (a request with a bad key consumes one too), and then the endpoint
falls back to ``Success()``. Failure behaviours answer before the key or body is
checked, like a gateway in front of the real service would.

Reference URLs handed to the emulator are only fetched when they point at a
loopback host, so a test can never reach the internet; any other URL counts as
"cannot be fetched".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import ipaddress
import json
import math
import os
import random
import socket
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from PIL import Image

__all__ = [
    "ENDPOINTS",
    "Behaviour",
    "Error",
    "Garbage",
    "Hang",
    "NBError",
    "Processing",
    "ProviderEmulator",
    "RateLimited",
    "RecordedRequest",
    "ResultKind",
    "ServerError",
    "Status",
    "Success",
    "UploadedFile",
    "make_png",
]

ResultKind: TypeAlias = Literal[
    "ok", "404", "huge", "huge_declared", "corrupt", "truncated", "slow", "garbage_url"
]

# "fetch" is text2img's poll (``/fetch/{id}`` and ``/fetch`` with ``request_id``);
# "nano_fetch" is nano_banana's (``/nano_banana/fetch/{id}``). Each knows only its
# own jobs, as the docs describe them: a job polled at the other route is not found.
ENDPOINTS: frozenset[str] = frozenset(
    {"text2img", "img2img", "multi_ref", "nbpro", "fetch", "nano_fetch", "file", "ref"}
)

ML_PREFIX = "/api/v1/enterprise"
NB_PATH = "/api/ai/nano-banana/generate"
UNABLE_TO_FETCH = "Unable to fetch image from provided URL"
PROCESSING_MESSAGE = "Try to fetch request after given estimated time"
RATE_LIMIT_MESSAGE = "Rate limit exceeded. Maximum 5 queued requests allowed."
GARBAGE_URL = "not a url: image pending"

SCHEDULERS: frozenset[str] = frozenset(
    {
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
    }
)
SAFETY_CHECKER_TYPES = ("blur", "sensitive_content_text", "pixelate", "black")
TEXT2IMG_FLAGS = (
    "safety_checker",
    "enhance_prompt",
    "panorama",
    "self_attention",
    "upscale",
    "tomesd",
    "use_karras_sigmas",
    "highres_fix",
    "loadbalancer",
    "temp",
    "base64",
)
NANO_FLAGS = ("watermark", "temp", "base64", "keep_original_aspect")
NB_SIZES: dict[str, int] = {"1k": 1024, "2k": 2048, "4k": 4096}
NB_ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9")
MAX_SEED = 4_294_967_295

# A client that mishandles an endless body must see it grow far past any sane
# limit, yet a client that reads it all should still finish in seconds.
HUGE_BYTES = 200_000_000
HUGE_CHUNK = 256 * 1024
# Caps what the emulator itself will buffer from a request part or a reference.
READ_CAP = 64 * 1024 * 1024


# --------------------------------------------------------------------------- behaviours


@dataclass(frozen=True, slots=True)
class Success:
    """Answer normally. ``result`` decides what the output URLs serve.

    ``base64`` overrides the request's ``base64`` flag (ModelsLab only);
    ``base64_url`` makes base64 output a URL to a ``.base64`` text file instead
    of inline text, which the provider notes say can happen. ``links_in`` says
    where a ModelsLab success puts its links: ``output`` (the usual list),
    ``output_string`` (one string, not a list), or ``proxy_links`` /
    ``future_links`` with ``output`` left empty.
    """

    base64: bool | None = None
    result: ResultKind = "ok"
    base64_url: bool = False
    nsfw: bool = False
    links_in: Literal["output", "output_string", "proxy_links", "future_links"] = "output"


@dataclass(frozen=True, slots=True)
class Processing:
    """ModelsLab queues the job: the submit answers ``processing``, the fetch routes
    answer ``processing`` ``polls - 1`` more times, then behave as ``then``.

    On Nano Banana Pro (a synchronous API) this just delays ``polls * eta`` seconds.
    ``fetch_result_url`` replaces the announced ``fetch_result`` (``{id}`` is the
    job id), e.g. to point a client somewhere it must not send the key.
    """

    polls: int = 1
    eta: float = 0.05
    misspell: bool = False
    fetch_result: bool = True
    then: Behaviour = field(default_factory=Success)
    fetch_result_url: str | None = None


@dataclass(frozen=True, slots=True)
class Error:
    """ModelsLab-style error body ``{status_word: ..., message_key: message}``."""

    http_status: int = 400
    message: str = "Something went wrong"
    status_word: str = "error"
    message_key: str = "message"


@dataclass(frozen=True, slots=True)
class NBError:
    """Nano Banana Pro error body ``{"error": error}``."""

    http_status: int
    error: str


@dataclass(frozen=True, slots=True)
class RateLimited:
    retry_after: float = 0.05
    nb: bool = False


@dataclass(frozen=True, slots=True)
class ServerError:
    """A non-JSON 5xx, as a proxy in front of the API would send."""

    http_status: int = 500
    body: bytes = b"<html>502 Bad Gateway</html>"
    content_type: str = "text/html"


@dataclass(frozen=True, slots=True)
class Garbage:
    http_status: int = 200
    body: bytes = b"not json"
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Hang:
    """Sleep before answering normally; the client is expected to time out first."""

    seconds: float = 3600


@dataclass(frozen=True, slots=True)
class Status:
    """HTTP 200 with an undocumented status word, e.g. ``failed``."""

    word: str
    message: str = "Generation failed"


Behaviour: TypeAlias = (
    Success | Processing | Error | NBError | RateLimited | ServerError | Garbage | Hang | Status
)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class UploadedFile:
    field: str
    filename: str | None
    content_type: str
    data: bytes

    def __repr__(self) -> str:  # keep megabytes of image data out of assertion output
        return (
            f"UploadedFile(field={self.field!r}, filename={self.filename!r}, "
            f"content_type={self.content_type!r}, bytes={len(self.data)})"
        )


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    json: Any | None
    form: dict[str, list[str]]
    files: list[UploadedFile]
    body: bytes
    endpoint: str
    received_at: float = 0.0  # time.monotonic(), for back-off assertions

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


# --------------------------------------------------------------------------- images

_cache_lock = threading.Lock()
_png_cache: OrderedDict[tuple[int, int, str], bytes] = OrderedDict()
_render_locks: dict[tuple[int, int, str], threading.Lock] = {}
_cache_bytes = 0
# Shared by every emulator in the process so a test session renders each size once.
_CACHE_LIMIT_BYTES = 256 * 1024 * 1024
# Above this many pixels the gradient is drawn small and upscaled: PNG encoding
# dominates anyway, and a 4k image must not cost seconds of CPU per test run.
_UPSCALE_ABOVE_PIXELS = 2048 * 2048


def make_png(width: int, height: int, *, photo_like: bool = False) -> bytes:
    """A real PNG of that size (blocking; call it through ``asyncio.to_thread``).

    ``photo_like`` fills it with 4-bit noise: about as incompressible as a photo,
    so 2048×2048 comes out around 7 MB. Results are cached per process.
    """
    global _cache_bytes
    if width < 1 or height < 1:
        raise ValueError(f"bad image size {width}x{height}")
    key = (width, height, "photo" if photo_like else "gradient")
    with _cache_lock:
        cached = _png_cache.get(key)
        if cached is not None:
            _png_cache.move_to_end(key)
            return cached
        lock = _render_locks.setdefault(key, threading.Lock())
    # One thread renders a given key; concurrent callers wait for its result.
    with lock:
        with _cache_lock:
            cached = _png_cache.get(key)
        if cached is not None:
            return cached
        data = _render_png(width, height, photo_like)
        with _cache_lock:
            _png_cache[key] = data
            _cache_bytes += len(data)
            while _cache_bytes > _CACHE_LIMIT_BYTES and len(_png_cache) > 1:
                _, evicted = _png_cache.popitem(last=False)
                _cache_bytes -= len(evicted)
            _render_locks.pop(key, None)
    return data


def _render_png(width: int, height: int, photo_like: bool) -> bytes:
    if photo_like:
        # Keeping only 4 random bits per channel lands a 2048² PNG in the 4–8 MB
        # range that real photos have; full 8-bit noise would be 12 MB.
        table = bytes((b & 0x0F) << 4 for b in range(256))
        raw = os.urandom(width * height * 3).translate(table)
        image = Image.frombytes("RGB", (width, height), raw)
    else:
        draw_w, draw_h = width, height
        if width * height > _UPSCALE_ABOVE_PIXELS:
            draw_w, draw_h = max(1, width // 4), max(1, height // 4)
        ramp = Image.linear_gradient("L")
        image = Image.merge(
            "RGB",
            (
                ramp.rotate(90).resize((draw_w, draw_h)),
                ramp.resize((draw_w, draw_h)),
                Image.new("L", (draw_w, draw_h), 128),
            ),
        )
        if (draw_w, draw_h) != (width, height):
            image = image.resize((width, height), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def _decoded_size(data: bytes) -> tuple[int, int] | None:
    """Size of a fully decodable image, else None (blocking)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size
    # Arbitrary bytes can make any decoder raise almost anything; all of it means
    # "not an image" here.
    except Exception:
        return None


def _png_header(width: int, height: int) -> bytes:
    """PNG signature plus IHDR, so an endless body looks like an image to sniffers."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    )


# --------------------------------------------------------------------------- internals


class _Invalid(Exception):
    """A request parameter the real API would reject."""


@dataclass
class _File:
    width: int
    height: int
    photo_like: bool
    encoding: Literal["png", "base64"] = "png"
    result: ResultKind = "ok"
    ready: bool = True


@dataclass
class _Generation:
    id: int
    kind: Literal["text2img", "nano"]
    width: int
    height: int
    samples: int
    base64: bool
    meta: dict[str, Any]
    files: list[str]


@dataclass
class _Job:
    generation: _Generation
    remaining: int
    then: Behaviour
    eta: float
    misspell: bool
    fetch_result: bool
    fetch_result_url: str | None = None
    outcome: Behaviour | None = None
    success_body: dict[str, Any] | None = None


def _is_loopback(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    # The seed documents send numbers as strings and leave optional ones null.
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _Invalid(f"The {name} field must be a number.")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _Invalid(f"The {name} field must be a number.") from None
    else:
        raise _Invalid(f"The {name} field must be a number.")
    if not math.isfinite(number):
        raise _Invalid(f"The {name} field must be a number.")
    return number


def _ranged(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    number = _number(body, name)
    if number is not None and not low <= number <= high:
        raise _Invalid(f"The {name} field must be between {low:g} and {high:g}.")
    return number


def _int_field(
    body: dict[str, Any], name: str, low: int, high: int, *, multiple_of: int = 1
) -> int | None:
    number = _ranged(body, name, low, high)
    if number is None:
        return None
    if not number.is_integer():
        raise _Invalid(f"The {name} field must be an integer.")
    if int(number) % multiple_of:
        raise _Invalid(f"The {name} field must be divisible by {multiple_of}.")
    return int(number)


def _flag(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if value not in ("yes", "no"):
        raise _Invalid(f"The {name} field must be yes or no.")
    return bool(value == "yes")


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _Invalid(f"The {name} field is required.")
        return None
    if not isinstance(value, str):
        raise _Invalid(f"The {name} field must be a string.")
    return value


def _nb_dimensions(size: str, aspect: str) -> tuple[int, int]:
    long_side = NB_SIZES[size]
    a, b = (int(part) for part in aspect.split(":"))
    if a >= b:
        return long_side, max(1, round(long_side * b / a))
    return max(1, round(long_side * a / b)), long_side


def _json_or_none(raw: bytes) -> tuple[bool, Any]:
    if not raw:
        return False, None
    try:
        return True, json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False, None


# --------------------------------------------------------------------------- emulator


class ProviderEmulator:
    def __init__(
        self,
        *,
        modelslab_key: str = "ml-test-key",
        nanobanana_key: str = "sk-test-key",
        nb_max_references: int = 8,
        nb_max_image_bytes: int = 2_500_000,
        latency: float = 0.0,
        photo_like: bool = False,
    ) -> None:
        self.modelslab_key = modelslab_key
        self.nanobanana_key = nanobanana_key
        self.nb_max_references = nb_max_references
        self.nb_max_image_bytes = nb_max_image_bytes
        self.latency = latency
        self.photo_like = photo_like
        self.requests: list[RecordedRequest] = []
        self.nb_in_flight = 0
        self.nb_peak_in_flight = 0
        self.base_url = ""
        self._scripts: dict[str, deque[Behaviour]] = {name: deque() for name in ENDPOINTS}
        self._references: dict[str, tuple[bytes, str]] = {}
        self._files: dict[str, _File] = {}
        # One id space per fetch route, in ranges that cannot overlap, so a job
        # polled at the wrong route is "not found" rather than someone else's job.
        self._jobs: dict[str, dict[int, _Job]] = {"text2img": {}, "nano": {}}
        self._next_id = random.randint(100_000, 4_000_000)
        self._next_nano_id = random.randint(5_000_000, 9_000_000)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def modelslab_base_url(self) -> str:
        return self.base_url + ML_PREFIX

    @property
    def nanobanana_base_url(self) -> str:
        return self.base_url

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        app = web.Application(client_max_size=READ_CAP)
        app.router.add_post(f"{ML_PREFIX}/text2img", self._text2img)
        app.router.add_post(f"{ML_PREFIX}/nano_banana/img2img", self._img2img)
        app.router.add_post(f"{ML_PREFIX}/nano_banana/multi_ref", self._multi_ref)
        app.router.add_post(f"{ML_PREFIX}/fetch/{{id}}", self._fetch_text2img)
        app.router.add_post(f"{ML_PREFIX}/fetch", self._fetch_text2img)
        app.router.add_post(f"{ML_PREFIX}/nano_banana/fetch/{{id}}", self._fetch_nano)
        app.router.add_post(NB_PATH, self._nbpro)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/refs/{name}", self._ref)
        # handler_cancellation: a client that gives up on a Hang or a stalled
        # download must free its handler at once, and close() must not wait on it.
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.25, access_log=None
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------- control API

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def script(self, endpoint: str, *behaviours: Behaviour) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {sorted(ENDPOINTS)}")
        self._scripts[endpoint].extend(behaviours)

    def pending_script(self, endpoint: str) -> tuple[Behaviour, ...]:
        """Scripted behaviours not yet consumed by a request."""
        return tuple(self._scripts[endpoint])

    def add_reference(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        self._references[name] = (data, content_type)
        return f"{self.base_url}/refs/{name}"

    def clear(self) -> None:
        """Forget recorded requests and pending scripts; jobs and files stay valid."""
        self.requests.clear()
        for queue in self._scripts.values():
            queue.clear()

    def file_url(self, name: str) -> str:
        return f"{self.base_url}/files/{name}"

    # ----------------------------------------------------------------- shared helpers

    def _record(
        self,
        request: web.Request,
        endpoint: str,
        *,
        parsed: Any | None = None,
        body: bytes = b"",
        form: dict[str, list[str]] | None = None,
        files: list[UploadedFile] | None = None,
    ) -> None:
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers={str(k): v for k, v in request.headers.items()},
                query={str(k): v for k, v in request.query.items()},
                json=parsed,
                form=form or {},
                files=files or [],
                body=body,
                endpoint=endpoint,
                received_at=time.monotonic(),
            )
        )

    def _pop(self, endpoint: str) -> Behaviour | None:
        queue = self._scripts[endpoint]
        return queue.popleft() if queue else None

    async def _prelude(self, endpoint: str) -> tuple[Behaviour | None, web.StreamResponse | None]:
        """Latency, then the scripted behaviour: a failure answers here and now."""
        behaviour = self._pop(endpoint)
        if self.latency:
            await asyncio.sleep(self.latency)
        if isinstance(behaviour, Hang):
            await asyncio.sleep(behaviour.seconds)
            return None, None
        if behaviour is None or isinstance(behaviour, Success | Processing):
            return behaviour, None
        return behaviour, self._failure_response(behaviour)

    def _failure_response(self, behaviour: Behaviour) -> web.StreamResponse:
        match behaviour:
            case Error(http_status=status, message=message, status_word=word, message_key=key):
                return web.json_response({"status": word, key: message}, status=status)
            case NBError(http_status=status, error=error):
                return web.json_response({"error": error}, status=status)
            case RateLimited(retry_after=retry_after, nb=True):
                return web.json_response(
                    {"error": "Rate limit exceeded"},
                    status=429,
                    headers={"Retry-After": f"{retry_after:g}"},
                )
            case RateLimited(retry_after=retry_after):
                return web.json_response(
                    {"status": "error", "message": RATE_LIMIT_MESSAGE, "retry_after": retry_after},
                    status=429,
                )
            case (
                ServerError(http_status=status, body=body, content_type=ctype)
                | Garbage(http_status=status, body=body, content_type=ctype)
            ):
                return web.Response(status=status, body=body, headers={"Content-Type": ctype})
            case Status(word=word, message=message):
                return web.json_response({"status": word, "message": message, "id": self._new_id()})
        raise AssertionError(f"not a failure behaviour: {behaviour!r}")

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _new_nano_id(self) -> int:
        self._next_nano_id += 1
        return self._next_nano_id

    def _new_file(self, width: int, height: int, *, ready: bool = True) -> str:
        name = f"{uuid.uuid4().hex}.png"
        self._files[name] = _File(width, height, self.photo_like, ready=ready)
        return name

    async def _png(self, width: int, height: int, photo_like: bool) -> bytes:
        return await asyncio.to_thread(make_png, width, height, photo_like=photo_like)

    async def _fetch_reference(self, url: Any) -> tuple[int, int] | None:
        """Download and decode a reference image the way the provider would."""
        data = await self._reference_bytes(url)
        if data is None:
            return None
        return await asyncio.to_thread(_decoded_size, data)

    async def _reference_bytes(self, url: Any) -> bytes | None:
        if not isinstance(url, str) or not _is_loopback(url) or self._session is None:
            return None
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    return None
                data = bytearray()
                async for chunk in resp.content.iter_chunked(HUGE_CHUNK):
                    data.extend(chunk)
                    if len(data) > READ_CAP:
                        return None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return bytes(data)

    # ----------------------------------------------------------------- ModelsLab

    async def _text2img(self, request: web.Request) -> web.StreamResponse:
        return await self._ml_generate(request, "text2img")

    async def _img2img(self, request: web.Request) -> web.StreamResponse:
        return await self._ml_generate(request, "img2img")

    async def _multi_ref(self, request: web.Request) -> web.StreamResponse:
        return await self._ml_generate(request, "multi_ref")

    async def _ml_generate(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        raw = await request.read()
        _, parsed = _json_or_none(raw)
        self._record(request, endpoint, parsed=parsed, body=raw)
        behaviour, early = await self._prelude(endpoint)
        if early is not None:
            return early
        if not isinstance(parsed, dict):
            return _ml_error(400, "Invalid JSON body.")
        if parsed.get("key") != self.modelslab_key:
            return _ml_error(401, "Invalid API key")
        generation: _Generation | None
        try:
            if endpoint == "text2img":
                generation = self._text2img_generation(parsed)
            else:
                generation = await self._nano_generation(parsed, endpoint)
        except _Invalid as exc:
            return _ml_error(400, str(exc))
        if generation is None:
            # The real API reports an unreadable reference with HTTP 200.
            return web.json_response({"status": "error", "message": UNABLE_TO_FETCH})
        if isinstance(behaviour, Processing):
            for name in generation.files:
                self._files[name].ready = False
            job = _Job(
                generation=generation,
                remaining=max(0, behaviour.polls - 1),
                then=behaviour.then,
                eta=behaviour.eta,
                misspell=behaviour.misspell,
                fetch_result=behaviour.fetch_result,
                fetch_result_url=behaviour.fetch_result_url,
            )
            self._jobs[generation.kind][generation.id] = job
            return web.json_response(self._processing_body(job))
        success = behaviour if isinstance(behaviour, Success) else Success()
        return web.json_response(await self._success_body(generation, success))

    def _text2img_generation(self, body: dict[str, Any]) -> _Generation:
        prompt = _text(body, "prompt", required=True)
        model_id = _text(body, "model_id", required=True)
        negative = _text(body, "negative_prompt")
        width = _int_field(body, "width", 1, 1024) or 512
        height = _int_field(body, "height", 1, 1024) or 512
        samples = _int_field(body, "samples", 1, 4) or 1
        seed = _int_field(body, "seed", 0, MAX_SEED)
        _int_field(body, "num_inference_steps", 1, 50)
        _ranged(body, "guidance_scale", 1, 20)
        _int_field(body, "clip_skip", 1, 8)
        flags = {name: _flag(body, name) for name in TEXT2IMG_FLAGS}
        scheduler = _text(body, "scheduler")
        if scheduler is not None and scheduler not in SCHEDULERS:
            raise _Invalid(f"The selected scheduler {scheduler!r} is invalid.")
        checker_type = _text(body, "safety_checker_type")
        if checker_type is not None and checker_type not in SAFETY_CHECKER_TYPES:
            raise _Invalid("The selected safety_checker_type is invalid.")
        _lora_strengths(body.get("lora_strength"))
        seed = seed or random.randint(1, MAX_SEED)
        meta = {
            "prompt": prompt,
            "model_id": model_id,
            "negative_prompt": negative or "",
            "scheduler": scheduler or "UniPCMultistepScheduler",
            "W": width,
            "H": height,
            "seed": seed,
            "n_samples": samples,
            "guidance_scale": _number(body, "guidance_scale") or 7.5,
            "steps": _int_field(body, "num_inference_steps", 1, 50) or 20,
            "safetychecker": body.get("safety_checker") or "yes",
            "upscale": "yes" if flags["upscale"] else "no",
        }
        return self._generation(width, height, samples, flags["base64"], meta, "text2img")

    async def _nano_generation(self, body: dict[str, Any], endpoint: str) -> _Generation | None:
        prompt = _text(body, "prompt", required=True)
        negative = _text(body, "negative_prompt")
        refs = body.get("ref_image")
        if refs is None or refs == "" or refs == []:
            raise _Invalid("The ref_image field is required.")
        if endpoint == "img2img" and isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, list):
            raise _Invalid("The ref_image field must be an array of image URLs.")
        if not all(isinstance(url, str) and url.strip() for url in refs):
            raise _Invalid("Each ref_image entry must be an image URL.")
        width = _int_field(body, "width", 1024, 2048, multiple_of=32)
        height = _int_field(body, "height", 1024, 2048, multiple_of=32)
        samples = _int_field(body, "samples", 1, 4) or 1
        seed = _int_field(body, "seed", 0, MAX_SEED)
        _ranged(body, "noise_scale_start", 0, 30)
        _ranged(body, "noise_scale_end", 0, 30)
        _ranged(body, "noise_clip_std", 0, 10)
        flags = {name: _flag(body, name) for name in NANO_FLAGS}

        sizes = await asyncio.gather(*(self._fetch_reference(url) for url in refs))
        first = sizes[0]
        if first is None or any(size is None for size in sizes):
            return None
        if endpoint == "multi_ref":
            out_w, out_h = width or 2048, height or 2048
        elif flags["keep_original_aspect"] and len(refs) == 1 and (width or height):
            long_side = max(width or 0, height or 0)
            scale = long_side / max(first)
            out_w, out_h = max(1, round(first[0] * scale)), max(1, round(first[1] * scale))
        else:
            out_w, out_h = width or first[0], height or first[1]
        meta = {
            "prompt": prompt,
            "negative_prompt": negative or "",
            "W": out_w,
            "H": out_h,
            "seed": seed or random.randint(1, MAX_SEED),
            "n_samples": samples,
            "ref_image": refs,
            "noise_scale_start": _number(body, "noise_scale_start") or 7.5,
            "noise_scale_end": _number(body, "noise_scale_end") or 7.5,
            "noise_clip_std": _number(body, "noise_clip_std") or 2.5,
            "watermark": "yes" if flags["watermark"] else "no",
        }
        return self._generation(out_w, out_h, samples, flags["base64"], meta, "nano")

    def _generation(
        self,
        width: int,
        height: int,
        samples: int,
        as_base64: bool,
        meta: dict[str, Any],
        kind: Literal["text2img", "nano"],
    ) -> _Generation:
        files = [self._new_file(width, height) for _ in range(samples)]
        job_id = self._new_id() if kind == "text2img" else self._new_nano_id()
        return _Generation(job_id, kind, width, height, samples, as_base64, meta, files)

    def _processing_body(self, job: _Job) -> dict[str, Any]:
        generation = job.generation
        body: dict[str, Any] = {
            "status": "processing",
            "eta": job.eta,
            ("messege" if job.misspell else "message"): PROCESSING_MESSAGE,
        }
        if job.fetch_result and job.fetch_result_url is not None:
            body["fetch_result"] = job.fetch_result_url.format(id=generation.id)
        elif job.fetch_result:
            route = "fetch" if generation.kind == "text2img" else "nano_banana/fetch"
            body["fetch_result"] = f"{self.modelslab_base_url}/{route}/{generation.id}"
        body.update(
            {
                "id": generation.id,
                "output": [],
                "future_links": [self.file_url(name) for name in generation.files],
                "meta": generation.meta,
            }
        )
        return body

    async def _success_body(self, generation: _Generation, success: Success) -> dict[str, Any]:
        for name in generation.files:
            self._files[name].ready = True
            self._files[name].result = success.result
        links = [self.file_url(name) for name in generation.files]
        as_base64 = generation.base64 if success.base64 is None else success.base64
        output: list[str]
        if success.result == "garbage_url":
            output = [GARBAGE_URL] * generation.samples
            links = list(output)
        elif as_base64 and success.base64_url:
            output = []
            for name in generation.files:
                text_name = name.removesuffix(".png") + ".base64"
                self._files[text_name] = _File(
                    generation.width,
                    generation.height,
                    self.photo_like,
                    encoding="base64",
                    result=success.result,
                )
                output.append(self.file_url(text_name))
        elif as_base64:
            if success.result == "corrupt":
                data = os.urandom(4096)
            else:
                data = await self._png(generation.width, generation.height, self.photo_like)
            output = [base64.b64encode(data).decode("ascii")] * generation.samples
        else:
            output = list(links)
        body: dict[str, Any] = {
            "status": "success",
            "generationTime": 1.2,
            "id": generation.id,
            "output": output,
            "proxy_links": links,
            "meta": generation.meta,
            "nsfw_content_detected": success.nsfw,
        }
        if success.links_in == "output_string":
            body["output"] = output[0]
        elif success.links_in == "proxy_links":
            body["output"] = []
        elif success.links_in == "future_links":
            body.update(output=[], proxy_links=[], future_links=links)
        return body

    async def _fetch_text2img(self, request: web.Request) -> web.StreamResponse:
        return await self._fetch(request, "fetch", "text2img")

    async def _fetch_nano(self, request: web.Request) -> web.StreamResponse:
        return await self._fetch(request, "nano_fetch", "nano")

    async def _fetch(
        self, request: web.Request, endpoint: str, kind: Literal["text2img", "nano"]
    ) -> web.StreamResponse:
        raw = await request.read()
        _, parsed = _json_or_none(raw)
        self._record(request, endpoint, parsed=parsed, body=raw)
        behaviour, early = await self._prelude(endpoint)
        if early is not None:
            return early
        if not isinstance(parsed, dict):
            return _ml_error(400, "Invalid JSON body.")
        if parsed.get("key") != self.modelslab_key:
            return _ml_error(401, "Invalid API key")
        raw_id: Any = request.match_info.get("id", parsed.get("request_id"))
        if raw_id is None or raw_id == "":
            return _ml_error(400, "The request_id field is required.")
        try:
            job_id = int(str(raw_id))
        except ValueError:
            return _ml_error(400, "The request_id field must be an integer.")
        job = self._jobs[kind].get(job_id)
        if job is None:
            return _ml_error(404, "Request not found")
        if isinstance(behaviour, Processing):
            # A scripted extra "still processing" that does not use up the job's polls.
            return web.json_response(self._processing_body(job))
        if isinstance(behaviour, Success) and job.outcome is None:
            job.outcome = behaviour
        if job.outcome is None:
            if job.remaining > 0:
                job.remaining -= 1
                return web.json_response(self._processing_body(job))
            then = job.then
            if isinstance(then, Processing):
                job.remaining = max(0, then.polls - 1)
                job.then, job.eta = then.then, then.eta
                job.misspell, job.fetch_result = then.misspell, then.fetch_result
                job.fetch_result_url = then.fetch_result_url
                return web.json_response(self._processing_body(job))
            job.outcome = then
        outcome = job.outcome
        if isinstance(outcome, Hang):
            await asyncio.sleep(outcome.seconds)
            outcome = job.outcome = Success()
        if isinstance(outcome, Success):
            if job.success_body is None:
                job.success_body = await self._success_body(job.generation, outcome)
            return web.json_response(job.success_body)
        return self._failure_response(outcome)

    # ----------------------------------------------------------------- Nano Banana Pro

    async def _nbpro(self, request: web.Request) -> web.StreamResponse:
        # Nano Banana Pro limits concurrent generations by plan: tests read the peak.
        self.nb_in_flight += 1
        self.nb_peak_in_flight = max(self.nb_peak_in_flight, self.nb_in_flight)
        try:
            return await self._nbpro_answer(request)
        finally:
            self.nb_in_flight -= 1

    async def _nbpro_answer(self, request: web.Request) -> web.StreamResponse:
        form: dict[str, list[str]] = {}
        files: list[UploadedFile] = []
        parsed: Any = None
        raw = b""
        problem: str | None = None
        multipart = request.content_type.startswith("multipart/")
        if multipart:
            try:
                await _read_multipart(request, form, files)
            except _Invalid as exc:
                problem = str(exc)
            except (ValueError, AssertionError, aiohttp.ClientPayloadError):
                problem = "Invalid multipart body"
        else:
            raw = await request.read()
            ok, parsed = _json_or_none(raw)
            if not ok or not isinstance(parsed, dict):
                problem = "Invalid JSON body"
        self._record(request, "nbpro", parsed=parsed, body=raw, form=form, files=files)
        behaviour, early = await self._prelude("nbpro")
        while early is None and isinstance(behaviour, Processing):
            await asyncio.sleep(behaviour.eta * behaviour.polls)
            then = behaviour.then
            if isinstance(then, Hang):
                await asyncio.sleep(then.seconds)
                behaviour = None
            elif isinstance(then, Success | Processing):
                behaviour = then
            else:
                early = self._failure_response(then)
        if early is not None:
            return early
        if request.headers.get("Authorization") != f"Bearer {self.nanobanana_key}":
            return _nb_error(401, "Missing or invalid API key")
        if problem is not None:
            return _nb_error(400, problem)
        fields: dict[str, Any]
        if multipart:
            fields = {name: values[-1] for name, values in form.items()}
            urls: list[Any] = form.get("image", [])
        else:
            fields = parsed
            image = parsed.get("image")
            urls = [] if image in (None, "", []) else image if isinstance(image, list) else [image]
        try:
            size, aspect = _nb_params(fields, urls)
        except _Invalid as exc:
            return _nb_error(400, str(exc))
        count = len(urls) + len(files)
        if len(files) > 1:
            # The seed shows one uploaded file; several images only as a URL array.
            return _nb_error(
                400,
                f"Only one image file may be uploaded; {len(files)} given. "
                "Send several images as an array of URLs.",
            )
        if count > self.nb_max_references:
            return _nb_error(
                400,
                f"Too many reference images: {count} given, maximum is {self.nb_max_references}",
            )
        for upload in files:
            if len(upload.data) > self.nb_max_image_bytes:
                return _nb_error(
                    400,
                    f"Image {upload.filename or upload.field!r} is {len(upload.data)} bytes; "
                    f"maximum image size is {self.nb_max_image_bytes / 1_000_000:g}MB",
                )
        for upload in files:
            if await asyncio.to_thread(_decoded_size, upload.data) is None:
                return _nb_error(400, f"Invalid image file {upload.filename or upload.field!r}")
        fetched = await asyncio.gather(*(self._reference_bytes(url) for url in urls))
        for url, data in zip(urls, fetched, strict=True):
            if data is None or await asyncio.to_thread(_decoded_size, data) is None:
                return _nb_error(400, f"Failed to fetch image from URL: {url}")
            # The plan's per-image limit holds however the image arrives.
            if len(data) > self.nb_max_image_bytes:
                return _nb_error(
                    400,
                    f"Image at {url} is {len(data)} bytes; "
                    f"maximum image size is {self.nb_max_image_bytes / 1_000_000:g}MB",
                )

        success = behaviour if isinstance(behaviour, Success) else Success()
        width, height = _nb_dimensions(size, aspect)
        if success.result == "garbage_url":
            url = GARBAGE_URL
        else:
            name = self._new_file(width, height)
            self._files[name].result = success.result
            url = self.file_url(name)
        return web.json_response(
            {
                "model": f"nano-banana-2-{size}",
                "created": int(time.time()),
                "images": [{"url": url}],
            }
        )

    # ----------------------------------------------------------------- files

    async def _ref(self, request: web.Request) -> web.StreamResponse:
        self._record(request, "ref")
        _, early = await self._prelude("ref")
        if early is not None:
            return early
        entry = self._references.get(request.match_info["name"])
        if entry is None:
            raise web.HTTPNotFound()
        data, content_type = entry
        return web.Response(body=data, headers={"Content-Type": content_type})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self._record(request, "file")
        behaviour, early = await self._prelude("file")
        if early is not None:
            return early
        entry = self._files.get(request.match_info["name"])
        if entry is None or not entry.ready:
            raise web.HTTPNotFound()
        result = behaviour.result if isinstance(behaviour, Success) else entry.result
        return await self._serve(request, entry, result)

    async def _serve(
        self, request: web.Request, entry: _File, result: ResultKind
    ) -> web.StreamResponse:
        if result in ("404", "garbage_url"):
            raise web.HTTPNotFound()
        if result == "corrupt":
            # A text prefix keeps lenient decoders (TGA sniffing) from accepting it.
            return web.Response(body=b"<corrupt>" + os.urandom(4096), content_type="image/png")
        if result in ("huge", "huge_declared"):
            return await self._serve_huge(request, entry, declared=result == "huge_declared")
        png = await self._png(entry.width, entry.height, entry.photo_like)
        if result == "truncated":
            return web.Response(body=png[: len(png) // 2], content_type="image/png")
        if result == "slow":
            return await self._serve_stalled(request, png)
        if entry.encoding == "base64":
            return web.Response(body=base64.b64encode(png), content_type="text/plain")
        return web.Response(body=png, content_type="image/png")

    async def _serve_huge(
        self, request: web.Request, entry: _File, *, declared: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        if declared:
            resp.content_length = HUGE_BYTES
        header = _png_header(entry.width, entry.height)
        zeros = bytes(HUGE_CHUNK)
        # A client that stops reading closes the socket; that ends the stream quietly.
        with contextlib.suppress(ConnectionError):
            await resp.prepare(request)
            await resp.write(header)
            sent = len(header)
            while sent < HUGE_BYTES:
                chunk = zeros[: min(HUGE_CHUNK, HUGE_BYTES - sent)]
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write_eof()
        return resp

    async def _serve_stalled(self, request: web.Request, png: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = len(png)
        with contextlib.suppress(ConnectionError):
            await resp.prepare(request)
            await resp.write(png[:64])
            # Stalls until the client gives up (handler cancellation) or close().
            await asyncio.sleep(3600)
        return resp


# --------------------------------------------------------------------------- module helpers


def _ml_error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "message": message}, status=status)


def _nb_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _lora_strengths(value: Any) -> None:
    if value is None or value == "":
        return
    parts = value.split(",") if isinstance(value, str) else [value]
    for part in parts:
        try:
            strength = float(part)
        except (TypeError, ValueError):
            raise _Invalid("The lora_strength field must be comma-separated numbers.") from None
        if not 0.1 <= strength <= 1:
            raise _Invalid("Each lora_strength must be between 0.1 and 1.")


def _nb_params(fields: dict[str, Any], urls: list[Any]) -> tuple[str, str]:
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Invalid("prompt is required")
    size = fields.get("size") or "1k"
    if size not in NB_SIZES:
        raise _Invalid(f"Invalid size {size!r}: must be one of 1k, 2k, 4k")
    aspect = fields.get("aspectRatio") or "1:1"
    if aspect not in NB_ASPECT_RATIOS:
        raise _Invalid(
            f"Invalid aspectRatio {aspect!r}: must be one of {', '.join(NB_ASPECT_RATIOS)}"
        )
    for url in urls:
        if not isinstance(url, str) or not url.strip():
            raise _Invalid("image must be a URL or an array of URLs")
    return size, aspect


async def _read_multipart(
    request: web.Request, form: dict[str, list[str]], files: list[UploadedFile]
) -> None:
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, aiohttp.BodyPartReader):
            raise _Invalid("Nested multipart bodies are not supported")
        name = part.name or ""
        if part.filename is None:
            form.setdefault(name, []).append(await part.text())
            continue
        data = bytearray()
        while chunk := await part.read_chunk(HUGE_CHUNK):
            data.extend(chunk)
            if len(data) > READ_CAP:
                raise _Invalid("Uploaded file is far too large")
        files.append(
            UploadedFile(
                field=name,
                filename=part.filename,
                content_type=part.headers.get("Content-Type", "application/octet-stream"),
                data=bytes(data),
            )
        )
