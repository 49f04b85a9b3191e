"""The ModelsLab client against the loopback ProviderEmulator: exact request
bodies, queued jobs and polling, every error mapping, retries, timeouts and
keeping the key out of messages and logs."""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.config import Settings
from bot.errors import (
    GenerationFailed,
    JobDeadlineExceeded,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderBadResponse,
    ProviderCreditsError,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderUnavailable,
    ReferenceFetchError,
)
from bot.models import (
    GenerationRequest,
    Mode,
    Progress,
    ProviderOutput,
    ReferenceImage,
    Stage,
)
from bot.providers import modelslab
from bot.providers._http import HttpResponse
from bot.providers.modelslab import ModelsLabProvider
from tests.emulators.providers import (
    Error,
    Garbage,
    Hang,
    Processing,
    ProviderEmulator,
    RateLimited,
    ServerError,
    Status,
    Success,
    make_png,
)

# Long and distinctive, so a leak anywhere is unmistakable.
KEY = "mlKEY7f3a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6"
PREFIX = "/api/v1/enterprise"


class Recorder:
    def __init__(self) -> None:
        self.events: list[Progress] = []

    async def __call__(self, progress: Progress) -> None:
        self.events.append(progress)


@pytest.fixture
async def emu() -> AsyncIterator[ProviderEmulator]:
    async with ProviderEmulator(modelslab_key=KEY) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def make_settings(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "modelslab_api_key": KEY,
        "modelslab_base_url": base_url,
        "modelslab_model_id": "flux",
        "modelslab_models": "sdxl",
        "poll_initial": 0.01,
        "poll_max": 0.05,
        "retry_backoff_max": 0.05,
        "request_timeout": 5.0,
        "job_deadline": 10.0,
        # The emulator's fetch_result is plain http on loopback: the test setting.
        "download_allow_loopback": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def client(
    emu: ProviderEmulator, session: aiohttp.ClientSession, **overrides: Any
) -> ModelsLabProvider:
    return ModelsLabProvider(make_settings(emu.modelslab_base_url, **overrides), session)


def reference(emu: ProviderEmulator, name: str, w: int = 800, h: int = 600) -> ReferenceImage:
    url = emu.add_reference(name, make_png(w, h))
    return ReferenceImage(data=None, mime="image/png", width=w, height=h, url=url)


async def run(
    provider: ModelsLabProvider, request: GenerationRequest, recorder: Recorder | None = None
) -> Any:
    return await provider.generate(provider.validate(request), recorder or Recorder())


def text(**kw: Any) -> GenerationRequest:
    return GenerationRequest(mode=Mode.TEXT, prompt="a red fox in snow", **kw)


# --------------------------------------------------------------------------- success


async def test_text2img_body_and_result(emu: ProviderEmulator, session: aiohttp.ClientSession):
    provider = client(emu, session)
    out = await run(provider, text(negative_prompt="blurry", seed=42, safety_checker=True))

    [sent] = emu.requests_to("text2img")
    assert sent.method == "POST"
    assert sent.path == f"{PREFIX}/text2img"
    assert sent.header("Content-Type") == "application/json"
    assert sent.header("Authorization") is None  # the key goes in the body only
    assert sent.json == {
        "key": KEY,
        "model_id": "flux",
        "prompt": "a red fox in snow",
        "negative_prompt": "blurry",
        "width": 512,
        "height": 512,
        "samples": 1,
        "seed": 42,
        "safety_checker": "yes",
    }
    assert out.provider == "modelslab"
    assert len(out.outputs) == 1
    assert out.outputs[0].url.startswith(emu.base_url + "/files/")
    assert out.seed == 42
    assert out.model == "flux"
    assert out.generation_time == 1.2
    assert out.provider_job_id is not None and out.provider_job_id.isdigit()
    assert out.nsfw_detected is False


async def test_text2img_every_option(emu: ProviderEmulator, session: aiohttp.ClientSession):
    provider = client(emu, session)
    options = {
        "num_inference_steps": "41",
        "guidance_scale": "7.5",
        "clip_skip": 2,
        "scheduler": "unipcmultistepscheduler",
        "safety_checker_type": "blur",
        "algorithm_type": "dpmsolver+++",
        "lora_model": "more_details, animie",
        "lora_strength": "0.5, 0.8",
        "embeddings_model": "easynegative",
        "vae": "sd-vae-ft-mse",
        "enhance_prompt": False,
        "upscale": "no",
        "panorama": "no",
        "self_attention": True,
        "highres_fix": "yes",
        "tomesd": "yes",
        "use_karras_sigmas": "yes",
        "loadbalancer": "no",
        "temp": "no",
        "webhook": "https://hooks.example.com/done",
        "track_id": "job-1",
    }
    request = text(model="sdxl", samples=4, aspect_ratio="16:9", options=options)
    out = await run(provider, request)
    [sent] = emu.requests_to("text2img")
    assert sent.json == {
        "key": KEY,
        "model_id": "sdxl",
        "prompt": "a red fox in snow",
        "width": 1024,
        "height": 576,
        "samples": 4,
        "seed": None,
        "num_inference_steps": 41,
        "guidance_scale": 7.5,
        "clip_skip": 2,
        "scheduler": "UniPCMultistepScheduler",
        "safety_checker_type": "blur",
        "algorithm_type": "dpmsolver+++",
        "lora_model": "more_details,animie",
        "lora_strength": "0.5,0.8",
        "embeddings_model": "easynegative",
        "vae": "sd-vae-ft-mse",
        "enhance_prompt": "no",
        "upscale": "no",
        "panorama": "no",
        "self_attention": "yes",
        "highres_fix": "yes",
        "tomesd": "yes",
        "use_karras_sigmas": "yes",
        "loadbalancer": "no",
        "temp": "no",
        "webhook": "https://hooks.example.com/done",
        "track_id": "job-1",
    }
    assert len(out.outputs) == 4
    assert out.seed is not None  # the provider's random seed, read from meta


async def test_img2img_body(emu: ProviderEmulator, session: aiohttp.ClientSession):
    provider = client(emu, session)
    ref = reference(emu, "cat.png")
    request = GenerationRequest(
        mode=Mode.EDIT,
        prompt="make it a watercolour",
        negative_prompt="text",
        references=(ref,),
        seed=7,
        samples=2,
        safety_checker=True,  # nano_banana has no such parameter: proceeds without it
        options={
            "noise_scale_start": 5,
            "noise_scale_end": "9.5",
            "noise_clip_std": 2.5,
            "keep_original_aspect": "yes",
            "watermark": False,
            "base64": "no",
        },
    )
    out = await run(provider, request)
    [sent] = emu.requests_to("img2img")
    assert sent.path == f"{PREFIX}/nano_banana/img2img"
    assert sent.json == {
        "key": KEY,
        "prompt": "make it a watercolour",
        "negative_prompt": "text",
        "ref_image": ref.url,
        "width": 1376,  # 800×600 fitted into 1024..2048, proportions kept
        "height": 1024,
        "samples": 2,
        "seed": 7,
        "noise_scale_start": 5.0,
        "noise_scale_end": 9.5,
        "noise_clip_std": 2.5,
        "keep_original_aspect": "yes",
        "watermark": "no",
        "base64": "no",
    }
    assert len(out.outputs) == 2
    assert out.model == "nano_banana"


async def test_multi_ref_body(emu: ProviderEmulator, session: aiohttp.ClientSession):
    provider = client(emu, session)
    refs = tuple(reference(emu, f"r{i}.png", 64, 64) for i in range(3))
    request = GenerationRequest(mode=Mode.BLEND, prompt="combine these", references=refs)
    out = await run(provider, request)
    [sent] = emu.requests_to("multi_ref")
    assert sent.path == f"{PREFIX}/nano_banana/multi_ref"
    assert sent.json == {
        "key": KEY,
        "prompt": "combine these",
        "ref_image": [r.url for r in refs],
        "width": 1024,
        "height": 1024,
        "samples": 1,
    }
    assert len(out.outputs) == 1


async def test_multi_ref_aspect_ratio(emu: ProviderEmulator, session: aiohttp.ClientSession):
    provider = client(emu, session)
    refs = tuple(reference(emu, f"a{i}.png", 64, 64) for i in range(2))
    await run(
        provider,
        GenerationRequest(mode=Mode.BLEND, prompt="x", references=refs, aspect_ratio="16:9"),
    )
    [sent] = emu.requests_to("multi_ref")
    assert sent.json is not None
    assert (sent.json["width"], sent.json["height"]) == (2048, 1152)


async def test_base64_inline_output(emu: ProviderEmulator, session: aiohttp.ClientSession):
    provider = client(emu, session)
    out = await run(provider, text(samples=2, options={"base64": True}))
    assert (emu.requests_to("text2img")[0].json or {})["base64"] == "yes"
    assert len(out.outputs) == 2
    for item in out.outputs:
        assert item.url is None
        assert item.data is not None and item.data.startswith(b"\x89PNG")


async def test_large_base64_response_read_whole(session: aiohttp.ClientSession):
    # Several MB of JSON arrive in many chunks; all of them must be read.
    async with ProviderEmulator(modelslab_key=KEY, photo_like=True) as emu:
        provider = client(emu, session)
        out = await run(provider, text(width=1024, height=1024, options={"base64": "yes"}))
    [item] = out.outputs
    assert item.data is not None and len(item.data) > 1_000_000
    assert item.data == make_png(1024, 1024, photo_like=True)


async def test_base64_url_output(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", Success(base64=True, base64_url=True))
    out = await run(client(emu, session), text(options={"base64": "yes"}))
    [item] = out.outputs
    assert item.url is not None and item.url.endswith(".base64")


async def test_nsfw_flag(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", Success(nsfw=True))
    out = await run(client(emu, session), text())
    assert out.nsfw_detected is True


# --------------------------------------------------------------------------- queued jobs


async def test_processing_polls_fetch_result(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", Processing(polls=3, eta=0.02))
    recorder = Recorder()
    out = await run(client(emu, session), text(), recorder)

    [submit] = emu.requests_to("text2img")
    fetches = emu.requests_to("fetch")
    assert len(fetches) == 3
    job_id = out.provider_job_id
    for fetch in fetches:
        assert fetch.path == f"{PREFIX}/fetch/{job_id}"
        assert fetch.json == {"key": KEY}
    assert [e.stage for e in recorder.events] == [Stage.PROCESSING] * 3
    assert all(e.provider_job_id == job_id for e in recorder.events)
    assert recorder.events[0].eta_seconds == 0.02
    assert out.outputs and out.outputs[0].url
    assert submit.received_at < fetches[0].received_at


@pytest.mark.parametrize(
    ("endpoint", "mode", "path"),
    [
        ("text2img", Mode.TEXT, f"{PREFIX}/fetch"),
        ("img2img", Mode.EDIT, f"{PREFIX}/nano_banana/fetch/{{id}}"),
        ("multi_ref", Mode.BLEND, f"{PREFIX}/nano_banana/fetch/{{id}}"),
    ],
)
async def test_processing_fallback_fetch_routes(
    emu: ProviderEmulator, session: aiohttp.ClientSession, endpoint: str, mode: Mode, path: str
):
    emu.script(endpoint, Processing(polls=2, fetch_result=False))
    refs = {
        Mode.TEXT: (),
        Mode.EDIT: (reference(emu, "e.png", 64, 64),),
        Mode.BLEND: (reference(emu, "b1.png", 64, 64), reference(emu, "b2.png", 64, 64)),
    }[mode]
    out = await run(client(emu, session), GenerationRequest(mode=mode, prompt="x", references=refs))
    job_id = out.provider_job_id
    assert job_id is not None
    fetches = emu.requests_to("fetch" if mode is Mode.TEXT else "nano_fetch")
    assert len(fetches) == 2
    for fetch in fetches:
        assert fetch.path == path.format(id=job_id)
        if mode is Mode.TEXT:
            assert fetch.json == {"key": KEY, "request_id": job_id}
        else:
            assert fetch.json == {"key": KEY}


@pytest.mark.parametrize(
    "where",
    [
        "http://{trap}/api/v1/enterprise/fetch/{{id}}",  # plain http, another host
        "https://{trap}/api/v1/enterprise/fetch/{{id}}",  # https, another host
        "https://modelslab.com.evil.example/api/v1/enterprise/fetch/{{id}}",
        "http://{api}@{trap}/api/v1/enterprise/fetch/{{id}}",  # the API host as userinfo
    ],
)
@pytest.mark.parametrize(
    ("endpoint", "mode", "poll"),
    [("text2img", Mode.TEXT, "fetch"), ("img2img", Mode.EDIT, "nano_fetch")],
)
async def test_key_never_follows_a_foreign_fetch_result(
    emu: ProviderEmulator,
    session: aiohttp.ClientSession,
    where: str,
    endpoint: str,
    mode: Mode,
    poll: str,
):
    async with ProviderEmulator(modelslab_key=KEY) as trap:
        api = emu.base_url.removeprefix("http://")
        target = where.format(trap=trap.base_url.removeprefix("http://"), api=api)
        emu.script(endpoint, Processing(polls=2, fetch_result_url=target))
        refs = (reference(emu, "e.png", 64, 64),) if mode is Mode.EDIT else ()
        request = GenerationRequest(mode=mode, prompt="x", references=refs)
        out = await run(client(emu, session), request)
        assert trap.requests == []
    assert out.outputs
    # The documented endpoint of the job's kind took the polls instead.
    fetches = emu.requests_to(poll)
    assert len(fetches) == 2
    expected = f"{PREFIX}/fetch" if mode is Mode.TEXT else f"{PREFIX}/nano_banana/fetch/"
    assert all(fetch.path.startswith(expected) for fetch in fetches)


async def test_plain_http_fetch_result_only_under_the_test_setting(
    emu: ProviderEmulator, session: aiohttp.ClientSession
):
    emu.script("text2img", Processing(polls=1))
    await run(client(emu, session, download_allow_loopback=False), text())
    [fetch] = emu.requests_to("fetch")
    # Not the announced http URL: the documented endpoint, with the request id.
    assert fetch.path == f"{PREFIX}/fetch"
    assert fetch.json is not None and "request_id" in fetch.json


@pytest.mark.parametrize("links_in", ["output_string", "proxy_links", "future_links"])
async def test_success_links_outside_output_list(
    emu: ProviderEmulator, session: aiohttp.ClientSession, links_in: Any
):
    emu.script("text2img", Processing(polls=1, then=Success(links_in=links_in)))
    out = await run(client(emu, session), text(samples=2))
    # A single string names one image.
    assert len(out.outputs) == (1 if links_in == "output_string" else 2)
    assert all(ref.url and ref.url.startswith(f"{emu.base_url}/files/") for ref in out.outputs)


async def test_proxy_links_come_before_future_links(
    emu: ProviderEmulator, session: aiohttp.ClientSession
):
    body = (
        b'{"status": "success", "id": 7, "output": [], '
        b'"proxy_links": ["https://proxy.example/a.png"], '
        b'"future_links": ["https://future.example/a.png"]}'
    )
    emu.script("text2img", Garbage(200, body))
    out = await run(client(emu, session), text())
    assert [ref.url for ref in out.outputs] == ["https://proxy.example/a.png"]


async def test_processing_misspelled_message(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", Processing(polls=1, misspell=True))
    out = await run(client(emu, session), text())
    assert len(emu.requests_to("fetch")) == 1
    assert out.outputs


async def test_processing_honours_eta(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", Processing(polls=1, eta=0.3))
    provider = client(emu, session, poll_initial=0.01, poll_max=1.0)
    await run(provider, text())
    [submit] = emu.requests_to("text2img")
    [fetch] = emu.requests_to("fetch")
    waited = fetch.received_at - submit.received_at
    assert 0.28 <= waited < 1.0


async def test_poll_wait_capped_by_poll_max(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", Processing(polls=1, eta=30))  # a real-world 30 s estimate
    started = time.monotonic()
    await run(client(emu, session, poll_max=0.1), text())
    assert time.monotonic() - started < 1.0


class _SleepSpy:
    """The provider module's ``asyncio``, noting each wait it asks for: the backoff
    is read from what was asked, not from wall-clock gaps a loaded machine stretches."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.waits.append(delay)
        await asyncio.sleep(delay)


async def test_poll_backs_off(
    emu: ProviderEmulator, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
):
    spy = _SleepSpy()
    monkeypatch.setattr(modelslab, "asyncio", spy)
    emu.script("text2img", Processing(polls=5, eta=0))
    await run(client(emu, session, poll_initial=0.02, poll_max=0.05), text())
    assert len(emu.requests_to("fetch")) == 5
    # ×1.5 per poll from poll_initial, never above poll_max.
    assert spy.waits == pytest.approx([0.02, 0.03, 0.045, 0.05, 0.05])
    times = [r.received_at for r in emu.requests_to("fetch")]
    assert all(b - a >= 0.03 for a, b in itertools.pairwise(times))  # waits are real


async def test_poll_retries_rate_limit_and_server_errors(
    emu: ProviderEmulator, session: aiohttp.ClientSession
):
    emu.script("text2img", Processing(polls=1))
    emu.script("fetch", RateLimited(retry_after=0.01), ServerError(502))
    out = await run(client(emu, session), text())
    assert len(emu.requests_to("fetch")) == 3
    assert out.outputs


async def test_poll_timeout_is_retried(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", Processing(polls=1))
    emu.script("fetch", Hang(5))
    out = await run(client(emu, session, request_timeout=0.3), text())
    assert len(emu.requests_to("fetch")) == 2
    assert out.outputs


async def test_job_that_fails_while_queued(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script(
        "text2img",
        Processing(polls=1, then=Error(200, "GPU out of memory", status_word="failed")),
    )
    with pytest.raises(GenerationFailed) as info:
        await run(client(emu, session), text())
    assert "GPU out of memory" in info.value.user_message


async def test_deadline_while_polling(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", Processing(polls=10_000, eta=0.01))
    started = time.monotonic()
    with pytest.raises(JobDeadlineExceeded) as info:
        await run(client(emu, session, job_deadline=0.4), text())
    assert time.monotonic() - started < 1.5
    error = info.value
    assert error.retryable is False
    assert "took too long" in error.user_message
    assert "nothing was charged" in error.user_message
    assert len(emu.requests_to("fetch")) >= 2


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("behaviour", "kind", "words"),
    [
        (Error(400, "The width field must be between 1 and 1024."), ProviderBadRequest, "width"),
        (Error(401, "Invalid API key"), ProviderAuthError, "misconfigured"),
        (Error(403, "Your plan does not allow this"), ProviderAuthError, "misconfigured"),
        (Error(402, "Insufficient credits"), ProviderCreditsError, "credits"),
        (Error(404, "Model not found"), ProviderNotFound, "Model not found"),
        (Error(400, "bad thing", message_key="messege"), ProviderBadRequest, "bad thing"),
        (Error(200, "Invalid model_id given"), ProviderBadRequest, "model_id"),
        (Error(200, "Generation failed", status_word="failed"), GenerationFailed, "failed"),
        (Status("failed"), GenerationFailed, "Generation failed"),
        (Status("wibble"), ProviderBadResponse, "could not understand"),
        (Garbage(), ProviderBadResponse, "could not understand"),
        (Garbage(200, b"[1, 2, 3]"), ProviderBadResponse, "could not understand"),
        (Garbage(200, b'{"status": "success", "output": []}'), ProviderBadResponse, "understand"),
        (Success(result="garbage_url"), ProviderBadResponse, "could not understand"),
    ],
)
async def test_error_mapping(
    emu: ProviderEmulator,
    session: aiohttp.ClientSession,
    behaviour: Any,
    kind: type[ProviderError],
    words: str,
):
    emu.script("text2img", behaviour)
    with pytest.raises(ProviderError) as info:
        await run(client(emu, session), text())
    error = info.value
    assert type(error) is kind
    assert words in error.user_message
    assert error.provider == "modelslab"
    assert len(emu.requests_to("text2img")) == 1  # none of these is retried
    if kind is ProviderAuthError:
        assert error.user_message == (
            "The bot's ModelsLab account is misconfigured; an admin has been told."
        )
        assert error.retryable is False


async def test_unable_to_fetch_reference(emu: ProviderEmulator, session: aiohttp.ClientSession):
    # The emulator (like the real API) answers HTTP 200 with an error body when it
    # cannot download a reference.
    ref = ReferenceImage(data=None, url="https://images.example.invalid/gone.png")
    with pytest.raises(ReferenceFetchError) as info:
        await run(
            client(emu, session), GenerationRequest(mode=Mode.EDIT, prompt="x", references=(ref,))
        )
    assert "could not read your reference image" in info.value.user_message
    assert "re-upload" in info.value.user_message


async def test_unable_to_fetch_with_http_400(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("img2img", Error(400, "Unable to fetch image from provided URL"))
    ref = reference(emu, "ok.png", 64, 64)
    with pytest.raises(ReferenceFetchError):
        await run(
            client(emu, session), GenerationRequest(mode=Mode.EDIT, prompt="x", references=(ref,))
        )


async def test_rate_limited_then_success(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", RateLimited(retry_after=0.05))
    out = await run(client(emu, session, retry_backoff_max=1.0), text())
    first, second = emu.requests_to("text2img")
    assert second.received_at - first.received_at >= 0.045  # retry_after honoured
    assert out.outputs


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_retried(
    emu: ProviderEmulator, session: aiohttp.ClientSession, status: int
):
    emu.script("text2img", ServerError(status), Error(503, "Service busy"))
    out = await run(client(emu, session), text())
    assert len(emu.requests_to("text2img")) == 3
    assert out.outputs


async def test_server_errors_exhausted(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", *[ServerError(503)] * 5)
    with pytest.raises(ProviderUnavailable) as info:
        await run(client(emu, session, retry_attempts=2), text())
    assert info.value.retryable is True
    assert info.value.status == 503
    assert "try again" in info.value.user_message
    assert len(emu.requests_to("text2img")) == 3


async def test_rate_limit_exhausted(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", *[RateLimited(retry_after=0.01)] * 5)
    with pytest.raises(ProviderRateLimited) as info:
        await run(client(emu, session, retry_attempts=1), text())
    assert info.value.retryable is True
    assert info.value.retry_after == pytest.approx(0.01)
    assert len(emu.requests_to("text2img")) == 2


async def test_submit_timeout_not_resent(emu: ProviderEmulator, session: aiohttp.ClientSession):
    emu.script("text2img", Hang())
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as info:
        await run(client(emu, session, request_timeout=0.3), text())
    assert time.monotonic() - started < 2
    assert info.value.retryable is True
    assert "did not answer in time" in info.value.user_message
    # A re-sent submit could start (and bill) the job twice.
    assert len(emu.requests_to("text2img")) == 1


async def test_connection_refused(session: aiohttp.ClientSession, refused_port: int):
    base = f"http://127.0.0.1:{refused_port}{PREFIX}"
    provider = ModelsLabProvider(make_settings(base, retry_attempts=2), session)
    with pytest.raises(ProviderUnavailable) as info:
        await run(provider, text())
    assert info.value.retryable is True
    assert "could not reach ModelsLab" in info.value.user_message


async def test_empty_success_is_bad_response(session: aiohttp.ClientSession):
    provider = ModelsLabProvider(make_settings("https://ml.example.com/api"), session)
    for output in ([], None, [""], [42]):
        response = HttpResponse(200, {}, b"", {"status": "success", "output": output})
        with pytest.raises(ProviderBadResponse):
            provider._interpret(response)
    inline = base64.b64encode(b"\x89PNG rest").decode()
    ok = provider._interpret(
        HttpResponse(
            200, {}, b"", {"status": "success", "output": [f"data:image/png;base64,{inline}"]}
        )
    )
    assert isinstance(ok, ProviderOutput)
    assert ok.outputs[0].data == b"\x89PNG rest"


async def test_untrusted_fetch_result_not_sent_the_key(session: aiohttp.ClientSession):
    provider = ModelsLabProvider(make_settings("https://ml.example.com/api"), session)
    queued = provider._interpret(
        HttpResponse(
            200,
            {},
            b"",
            {"status": "processing", "id": 5, "eta": "3.5", "fetch_result": "http://evil.test/f"},
        )
    )
    assert not isinstance(queued, ProviderOutput)
    url, body = provider._fetch_target(Mode.TEXT, queued)
    assert url == "https://ml.example.com/api/fetch"
    assert body["request_id"] == "5"
    assert queued.eta == 3.5


# --------------------------------------------------------------------------- secrecy


async def test_key_never_leaks(
    emu: ProviderEmulator,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    refused_port: int,
):
    caplog.set_level(logging.DEBUG)
    provider = client(emu, session, retry_attempts=1, request_timeout=0.3, job_deadline=2.0)
    behaviours: list[Any] = [
        Error(400, f"Invalid key {KEY} for model"),
        Error(401, f"key={KEY}"),
        Error(402, "Insufficient credits"),
        Error(403, "Plan"),
        Error(404, "Model not found"),
        Error(200, f"oops {KEY}", status_word="failed"),
        RateLimited(),
        RateLimited(),
        ServerError(500, body=KEY.encode()),
        ServerError(500, body=KEY.encode()),
        Garbage(200, KEY.encode()),
        Status("weird", message=KEY),
        Hang(),
        Success(result="garbage_url"),
    ]
    errors: list[BaseException] = []
    for behaviour in behaviours:
        emu.script("text2img", behaviour)
    while emu.pending_script("text2img"):
        try:
            await run(provider, text())
        except ProviderError as exc:
            errors.append(exc)
    emu.script("text2img", Processing(polls=10_000, eta=0.01))
    with pytest.raises(JobDeadlineExceeded) as deadline:
        await run(client(emu, session, job_deadline=0.2), text())
    errors.append(deadline.value)
    bad_ref = ReferenceImage(data=None, url="https://images.example.invalid/x.png")
    with pytest.raises(ReferenceFetchError) as fetch:
        await run(provider, GenerationRequest(mode=Mode.EDIT, prompt="x", references=(bad_ref,)))
    errors.append(fetch.value)
    refused = ModelsLabProvider(
        make_settings(f"http://127.0.0.1:{refused_port}{PREFIX}", retry_attempts=0), session
    )
    with pytest.raises(ProviderUnavailable) as unreachable:
        await run(refused, text())
    errors.append(unreachable.value)

    assert len(errors) >= 14
    for error in errors:
        for text_ in (str(error), repr(error), getattr(error, "user_message", "")):
            assert KEY not in text_
        cause = error.__cause__ or error.__context__
        assert cause is None or KEY not in repr(cause)
    assert KEY not in repr(provider)
    assert caplog.records, "expected the client to log its calls"
    for record in caplog.records:
        assert KEY not in record.getMessage()
        if record.exc_info:
            assert KEY not in logging.Formatter().formatException(record.exc_info)
    assert any("[redacted]" in r.getMessage() for r in caplog.records)
