"""The Nano Banana Pro client against the loopback ProviderEmulator: JSON and
multipart bodies, references fitted under the upload limit, error mapping,
retries, timeouts and key hygiene."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from PIL import Image

from bot.config import Settings
from bot.errors import (
    GenerationFailed,
    JobDeadlineExceeded,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderBadResponse,
    ProviderCreditsError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    ValidationError,
)
from bot.images import ImageProcessor
from bot.models import GenerationRequest, Mode, Progress, ReferenceImage, Stage
from bot.providers.nanobanana import NanoBananaProvider
from tests.emulators.providers import (
    Garbage,
    Hang,
    NBError,
    Processing,
    ProviderEmulator,
    RateLimited,
    ServerError,
    Success,
    make_png,
)

KEY = "sk-NBKEY5e1d9c7b3a2f4e6d8c0b1a3f5e7d9c2b4a6f8e0d1c3b5a7f9e2d4c6b8a0"
PATH = "/api/ai/nano-banana/generate"
LIMIT = 2_500_000


class Recorder:
    def __init__(self) -> None:
        self.events: list[Progress] = []

    async def __call__(self, progress: Progress) -> None:
        self.events.append(progress)


@pytest.fixture
async def emu() -> AsyncIterator[ProviderEmulator]:
    async with ProviderEmulator(nanobanana_key=KEY) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture(scope="module")
def images() -> Iterator[ImageProcessor]:
    with ImageProcessor(max_input_bytes=50_000_000, max_input_pixels=40_000_000) as processor:
        yield processor


def make_settings(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "nanobanana_api_key": KEY,
        "nanobanana_base_url": base_url,
        "retry_backoff_max": 0.05,
        "nanobanana_timeout": 5.0,
        "job_deadline": 10.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def make_client(
    emu: ProviderEmulator, session: aiohttp.ClientSession, images: ImageProcessor
) -> Any:
    def build(**overrides: Any) -> NanoBananaProvider:
        return NanoBananaProvider(
            make_settings(emu.nanobanana_base_url, **overrides), session, images
        )

    return build


async def run(
    provider: NanoBananaProvider, request: GenerationRequest, recorder: Recorder | None = None
) -> Any:
    return await provider.generate(provider.validate(request), recorder or Recorder())


def text(**kw: Any) -> GenerationRequest:
    return GenerationRequest(mode=Mode.TEXT, prompt="a koi pond at golden hour", **kw)


async def png_ref(
    images: ImageProcessor, w: int, h: int, *, url: str | None = None, photo: bool = False
) -> ReferenceImage:
    return await images.load_reference(
        make_png(w, h, photo_like=photo), filename="photo.png", url=url
    )


# --------------------------------------------------------------------------- success


async def test_text_json_body(emu: ProviderEmulator, make_client: Any):
    recorder = Recorder()
    out = await run(make_client(), text(aspect_ratio="16:9", size="2k"), recorder)
    [sent] = emu.requests_to("nbpro")
    assert sent.method == "POST" and sent.path == PATH
    assert sent.header("Authorization") == f"Bearer {KEY}"
    assert sent.header("Content-Type") == "application/json"
    assert sent.json == {"prompt": "a koi pond at golden hour", "size": "2k", "aspectRatio": "16:9"}
    assert out.provider == "nanobanana"
    assert out.model == "nano-banana-2-2k"
    [item] = out.outputs
    assert item.url is not None and item.url.startswith(emu.base_url + "/files/")
    assert out.generation_time is not None and out.generation_time >= 0
    assert [e.stage for e in recorder.events] == [Stage.PROCESSING]


async def test_default_size_is_1k(emu: ProviderEmulator, make_client: Any):
    await run(make_client(), text())
    assert emu.requests_to("nbpro")[0].json == {"prompt": "a koi pond at golden hour", "size": "1k"}


async def test_4k_when_allowed(emu: ProviderEmulator, make_client: Any):
    out = await run(make_client(nanobanana_allow_4k=True), text(size="4k"))
    assert (emu.requests_to("nbpro")[0].json or {})["size"] == "4k"
    assert out.model == "nano-banana-2-4k"


async def test_4k_refused_without_plan(emu: ProviderEmulator, make_client: Any):
    provider = make_client(nanobanana_allow_4k=False)
    with pytest.raises(ValidationError) as info:
        provider.validate(text(size="4k"))
    assert info.value.option == "size"
    assert "plan" in info.value.user_message
    assert emu.requests == []


@pytest.mark.parametrize("count", [1, 3])
async def test_url_transport_json(
    emu: ProviderEmulator, make_client: Any, images: ImageProcessor, count: int
):
    refs = []
    for i in range(count):
        data = make_png(64, 48)
        refs.append(await images.load_reference(data, url=emu.add_reference(f"u{i}.png", data)))
    mode = Mode.EDIT if count == 1 else Mode.BLEND
    provider = make_client(nanobanana_reference_transport="url")
    await run(provider, GenerationRequest(mode=mode, prompt="restyle", references=tuple(refs)))
    [sent] = emu.requests_to("nbpro")
    assert sent.header("Content-Type") == "application/json"
    expected: Any = refs[0].url if count == 1 else [r.url for r in refs]
    assert sent.json == {"prompt": "restyle", "size": "1k", "image": expected}
    assert sent.files == []


async def test_upload_transport_multipart(
    emu: ProviderEmulator, make_client: Any, images: ImageProcessor
):
    ref = await png_ref(images, 64, 48, url="https://cdn.discordapp.com/attachments/1/2/a.png")
    request = GenerationRequest(
        mode=Mode.EDIT, prompt="restyle it", references=(ref,), aspect_ratio="3:2"
    )
    await run(make_client(), request)
    [sent] = emu.requests_to("nbpro")
    assert sent.header("Authorization") == f"Bearer {KEY}"
    assert (sent.header("Content-Type") or "").startswith("multipart/form-data")
    assert sent.json is None
    assert sent.form == {"prompt": ["restyle it"], "size": ["1k"], "aspectRatio": ["3:2"]}
    [upload] = sent.files
    assert upload.field == "image"
    assert upload.data == ref.data  # small enough: sent unchanged
    assert upload.content_type == "image/png"
    assert upload.filename is not None and upload.filename.endswith(".png")


@pytest.mark.parametrize("transport", ["upload", "url"])
async def test_several_uploaded_references_go_as_a_url_array(
    emu: ProviderEmulator, make_client: Any, images: ImageProcessor, transport: str
):
    # Seed 004 shows one uploaded file and several images only as a JSON array of
    # URLs; the emulator refuses repeated multipart image parts as undocumented.
    refs = []
    for i, (w, h) in enumerate([(64, 48), (32, 32), (40, 60)]):
        data = make_png(w, h)
        url = emu.add_reference(f"attachment{i}.png", data)
        refs.append(await images.load_reference(data, filename=f"a{i}.png", url=url))
    request = GenerationRequest(
        mode=Mode.BLEND, prompt="blend them", references=tuple(refs), aspect_ratio="3:2"
    )
    out = await run(make_client(nanobanana_reference_transport=transport), request)
    assert out.outputs
    [sent] = emu.requests_to("nbpro")
    assert sent.header("Content-Type") == "application/json"
    assert sent.files == []
    assert sent.json == {
        "prompt": "blend them",
        "size": "1k",
        "aspectRatio": "3:2",
        "image": [ref.url for ref in refs],
    }


async def test_several_references_without_links_are_refused_before_sending(
    emu: ProviderEmulator, make_client: Any, images: ImageProcessor
):
    linked = await png_ref(images, 32, 32, url=emu.add_reference("l.png", make_png(32, 32)))
    local = await png_ref(images, 40, 40)  # e.g. a file given to the CLI
    provider = make_client()
    with pytest.raises(ValidationError) as info:
        provider.validate(
            GenerationRequest(mode=Mode.BLEND, prompt="mix", references=(linked, local))
        )
    assert info.value.option == "references"
    assert "Reference image 2 has no link" in info.value.user_message
    assert emu.requests == []


async def test_oversized_reference_among_several_is_refused_before_sending(
    emu: ProviderEmulator, make_client: Any, images: ImageProcessor
):
    # The limit holds for references fetched by URL too, and a link cannot be shrunk.
    small = make_png(32, 32)
    big = make_png(2048, 2048, photo_like=True)
    assert len(big) > LIMIT
    refs = (
        await images.load_reference(small, url=emu.add_reference("s.png", small)),
        await images.load_reference(big, url=emu.add_reference("b.png", big)),
    )
    provider = make_client()
    with pytest.raises(ValidationError) as info:
        provider.validate(GenerationRequest(mode=Mode.BLEND, prompt="mix", references=refs))
    message = info.value.user_message
    assert "Reference image 2 is" in message and "at most 2.5 MB" in message
    assert emu.requests == []


async def test_oversized_single_url_reference_is_uploaded_fitted(
    emu: ProviderEmulator, make_client: Any, images: ImageProcessor
):
    # With URL transport, one link to more than 2.5 MB would be refused by the
    # service: a fitted copy is uploaded instead.
    big = make_png(2048, 2048, photo_like=True)
    ref = await images.load_reference(big, url=emu.add_reference("big.png", big))
    provider = make_client(nanobanana_reference_transport="url")
    out = await run(provider, GenerationRequest(mode=Mode.EDIT, prompt="x", references=(ref,)))
    assert out.outputs
    [sent] = emu.requests_to("nbpro")
    [upload] = sent.files
    assert len(upload.data) <= LIMIT
    assert emu.requests_to("ref") == []


async def test_upload_mode_falls_back_to_urls_without_bytes(
    emu: ProviderEmulator, make_client: Any
):
    url = emu.add_reference("only-url.png", make_png(40, 40))
    ref = ReferenceImage(data=None, url=url)
    await run(make_client(), GenerationRequest(mode=Mode.EDIT, prompt="x", references=(ref,)))
    [sent] = emu.requests_to("nbpro")
    assert sent.json == {"prompt": "x", "size": "1k", "image": url}


async def test_large_reference_fitted_under_limit(
    emu: ProviderEmulator, make_client: Any, images: ImageProcessor
):
    big = await png_ref(images, 2048, 2048, photo=True)
    assert big.data is not None and len(big.data) > LIMIT
    out = await run(
        make_client(), GenerationRequest(mode=Mode.EDIT, prompt="fix it", references=(big,))
    )
    assert out.outputs
    [sent] = emu.requests_to("nbpro")
    [upload] = sent.files
    assert len(upload.data) <= LIMIT
    with Image.open(io.BytesIO(upload.data)) as image:
        image.load()
        assert image.width > 0 and image.height > 0
        fmt = image.format
    assert upload.content_type == Image.MIME[fmt or "PNG"]


async def test_processing_delay_then_success(emu: ProviderEmulator, make_client: Any):
    emu.script("nbpro", Processing(polls=2, eta=0.05))
    out = await run(make_client(), text())
    assert out.outputs
    assert len(emu.requests_to("nbpro")) == 1


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("behaviour", "kind", "words"),
    [
        (NBError(400, "Invalid aspectRatio"), ProviderBadRequest, "Invalid aspectRatio"),
        (NBError(401, "Missing or invalid API key"), ProviderAuthError, "misconfigured"),
        (NBError(403, "4K generation requires a paid plan"), ProviderAuthError, "misconfigured"),
        (NBError(402, "Insufficient credits"), ProviderCreditsError, "credits"),
        (NBError(200, "Prompt rejected by safety filter"), ProviderBadRequest, "safety filter"),
        (Garbage(), ProviderBadResponse, "could not understand"),
        (Garbage(200, b'{"images": []}'), ProviderBadResponse, "could not understand"),
        (Garbage(200, b'{"images": [{"url": 5}]}'), ProviderBadResponse, "could not understand"),
        (Success(result="garbage_url"), ProviderBadResponse, "could not understand"),
    ],
)
async def test_error_mapping(
    emu: ProviderEmulator, make_client: Any, behaviour: Any, kind: type[ProviderError], words: str
):
    emu.script("nbpro", behaviour)
    with pytest.raises(ProviderError) as info:
        await run(make_client(), text())
    assert type(info.value) is kind
    assert words in info.value.user_message
    assert info.value.provider == "nanobanana"
    assert len(emu.requests_to("nbpro")) == 1
    if kind is ProviderAuthError:
        assert info.value.user_message == (
            "The bot's Nano Banana Pro account is misconfigured; an admin has been told."
        )


async def test_rate_limited_then_success(emu: ProviderEmulator, make_client: Any):
    emu.script("nbpro", RateLimited(retry_after=0.05, nb=True))
    out = await run(make_client(retry_backoff_max=1.0), text())
    first, second = emu.requests_to("nbpro")
    assert second.received_at - first.received_at >= 0.045  # Retry-After header honoured
    assert out.outputs


async def test_server_errors_retried(emu: ProviderEmulator, make_client: Any):
    emu.script("nbpro", ServerError(502), ServerError(503))
    out = await run(make_client(), text())
    assert len(emu.requests_to("nbpro")) == 3
    assert out.outputs


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        (NBError(500, "Generation failed: content policy"), ": Generation failed: content policy"),
        (ServerError(500), "could not make this image. Nothing was charged"),
    ],
)
async def test_generation_failed_is_not_retried(
    emu: ProviderEmulator, make_client: Any, behaviour: Any, words: str
):
    # Seed 004: HTTP 500 means "Generation failed". A retry could take minutes
    # again and be billed again.
    emu.script("nbpro", behaviour, behaviour, behaviour)
    with pytest.raises(GenerationFailed) as info:
        await run(make_client(retry_attempts=3), text())
    assert len(emu.requests_to("nbpro")) == 1
    assert info.value.retryable is False
    assert info.value.status == 500
    assert words in info.value.user_message


async def test_multipart_rebuilt_for_each_retry(
    emu: ProviderEmulator, make_client: Any, images: ImageProcessor
):
    emu.script("nbpro", ServerError(502))
    ref = await png_ref(images, 64, 64)
    await run(make_client(), GenerationRequest(mode=Mode.EDIT, prompt="x", references=(ref,)))
    _first, second = emu.requests_to("nbpro")
    assert second.files and second.files[0].data == ref.data


async def test_retries_exhausted(emu: ProviderEmulator, make_client: Any):
    emu.script("nbpro", *[RateLimited(retry_after=0.01, nb=True)] * 4)
    with pytest.raises(ProviderRateLimited) as info:
        await run(make_client(retry_attempts=2), text())
    assert info.value.retryable is True
    assert info.value.retry_after == pytest.approx(0.01)
    assert len(emu.requests_to("nbpro")) == 3


async def test_timeout(emu: ProviderEmulator, make_client: Any):
    emu.script("nbpro", Hang())
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as info:
        await run(make_client(nanobanana_timeout=0.3), text())
    assert time.monotonic() - started < 2
    assert info.value.retryable is True
    assert len(emu.requests_to("nbpro")) == 1  # a synchronous, billed call is not re-sent


async def test_deadline(emu: ProviderEmulator, make_client: Any):
    emu.script("nbpro", Hang())
    with pytest.raises(JobDeadlineExceeded) as info:
        await run(make_client(job_deadline=0.3), text())
    assert info.value.retryable is False
    assert "nothing was charged" in info.value.user_message


async def test_connection_refused(
    session: aiohttp.ClientSession, images: ImageProcessor, refused_port: int
):
    provider = NanoBananaProvider(
        make_settings(f"http://127.0.0.1:{refused_port}", retry_attempts=1), session, images
    )
    with pytest.raises(ProviderUnavailable) as info:
        await run(provider, text())
    assert info.value.retryable is True
    assert "could not reach Nano Banana Pro" in info.value.user_message


# --------------------------------------------------------------------------- secrecy


async def test_key_never_leaks(
    emu: ProviderEmulator, make_client: Any, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    provider = make_client(retry_attempts=0, nanobanana_timeout=0.3)
    behaviours: list[Any] = [
        NBError(400, f"Bad key Bearer {KEY}"),
        NBError(401, f"invalid key {KEY}"),
        NBError(402, "no credits"),
        NBError(500, KEY),
        RateLimited(nb=True),
        ServerError(502, body=KEY.encode()),
        Garbage(200, KEY.encode()),
        Hang(),
    ]
    for behaviour in behaviours:
        emu.script("nbpro", behaviour)
    errors: list[ProviderError] = []
    while emu.pending_script("nbpro"):
        with pytest.raises(ProviderError) as info:
            await run(provider, text())
        errors.append(info.value)
    assert len(errors) == len(behaviours)
    for error in errors:
        for text_ in (str(error), repr(error), error.user_message):
            assert KEY not in text_
            assert KEY.removeprefix("sk-") not in text_
    assert KEY not in repr(provider)
    for record in caplog.records:
        assert KEY.removeprefix("sk-") not in record.getMessage()
        if record.exc_info:
            assert KEY not in logging.Formatter().formatException(record.exc_info)
