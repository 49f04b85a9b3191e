"""The provider emulator answers like the documented APIs, driven by plain aiohttp calls."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.emulators.providers import (
    Error,
    Garbage,
    Hang,
    NBError,
    Processing,
    ProviderEmulator,
    RateLimited,
    ServerError,
    Status,
    Success,
    make_png,
)

ML_KEY = "ml-test-key"
NB_AUTH = {"Authorization": "Bearer sk-test-key"}


@pytest.fixture
async def emu():
    async with ProviderEmulator() as emulator:
        yield emulator


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


async def image_size(data: bytes) -> tuple[int, int]:
    return await asyncio.to_thread(_size, data)


async def post(http, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def download(http, url: str) -> tuple[int, bytes]:
    async with http.get(url) as resp:
        return resp.status, await resp.read()


def text2img_body(**extra: Any) -> dict[str, Any]:
    return {"key": ML_KEY, "model_id": "sdxl", "prompt": "a red fox", **extra}


async def reference(emu, name: str = "ref.png", width: int = 64, height: int = 48) -> str:
    return str(emu.add_reference(name, await asyncio.to_thread(make_png, width, height)))


# ----------------------------------------------------------------------------- ModelsLab


async def test_text2img_success_defaults(emu, http):
    status, body = await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body())

    assert status == 200
    assert body["status"] == "success"
    assert isinstance(body["id"], int)
    assert body["nsfw_content_detected"] is False
    assert body["meta"]["W"] == body["meta"]["H"] == 512
    assert body["meta"]["n_samples"] == 1
    assert body["meta"]["prompt"] == "a red fox"
    assert isinstance(body["meta"]["seed"], int) and body["meta"]["seed"] > 0
    assert len(body["output"]) == 1 and body["proxy_links"] == body["output"]
    got, data = await download(http, body["output"][0])
    assert got == 200
    assert await image_size(data) == (512, 512)


async def test_text2img_accepts_numeric_strings_and_echoes_seed(emu, http):
    status, body = await post(
        http,
        f"{emu.modelslab_base_url}/text2img",
        text2img_body(width="768", height="256", samples="2", seed="1234", guidance_scale=7.5),
    )

    assert status == 200
    assert body["meta"]["seed"] == 1234
    assert (body["meta"]["W"], body["meta"]["H"]) == (768, 256)
    assert len(body["output"]) == 2 and body["output"][0] != body["output"][1]
    for url in body["output"]:
        _, data = await download(http, url)
        assert await image_size(data) == (768, 256)


async def test_null_or_zero_seed_is_randomised(emu, http):
    seeds = set()
    for seed in (None, 0, None):
        _, body = await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body(seed=seed))
        seeds.add(body["meta"]["seed"])
    assert 0 not in seeds and None not in seeds
    assert len(seeds) > 1


async def test_img2img_defaults_to_reference_size(emu, http):
    url = await reference(emu, width=96, height=80)
    body_in = {"key": ML_KEY, "prompt": "watercolour", "ref_image": url}

    status, body = await post(http, f"{emu.modelslab_base_url}/nano_banana/img2img", body_in)

    assert status == 200 and body["status"] == "success"
    _, data = await download(http, body["output"][0])
    assert await image_size(data) == (96, 80)
    # The emulator really fetched the reference, as the provider would.
    assert [r.path for r in emu.requests_to("ref")] == ["/refs/ref.png"]


async def test_img2img_explicit_size_and_keep_original_aspect(emu, http):
    url = await reference(emu, width=200, height=100)
    endpoint = f"{emu.modelslab_base_url}/nano_banana/img2img"

    _, body = await post(
        http,
        endpoint,
        {"key": ML_KEY, "prompt": "p", "ref_image": [url], "width": 1024, "height": "1536"},
    )
    assert (body["meta"]["W"], body["meta"]["H"]) == (1024, 1536)

    _, body = await post(
        http,
        endpoint,
        {
            "key": ML_KEY,
            "prompt": "p",
            "ref_image": url,
            "width": 2048,
            "keep_original_aspect": "yes",
        },
    )
    assert (body["meta"]["W"], body["meta"]["H"]) == (2048, 1024)
    _, data = await download(http, body["output"][0])
    assert await image_size(data) == (2048, 1024)


async def test_multi_ref_defaults_to_2048(emu, http):
    urls = [await reference(emu, "a.png"), await reference(emu, "b.png", 32, 32)]

    status, body = await post(
        http,
        f"{emu.modelslab_base_url}/nano_banana/multi_ref",
        {"key": ML_KEY, "prompt": "combine", "ref_image": urls, "seed": 42, "samples": 1},
    )

    assert status == 200 and body["status"] == "success"
    assert body["meta"]["seed"] == 42
    _, data = await download(http, body["output"][0])
    assert await image_size(data) == (2048, 2048)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("text2img", "wrong"),
        ("text2img", None),
        ("nano_banana/img2img", "wrong"),
        ("nano_banana/multi_ref", None),
        ("fetch/123", "wrong"),
        ("fetch", None),
    ],
)
async def test_modelslab_bad_key(emu, http, path, key):
    body = text2img_body(ref_image=["http://127.0.0.1:1/x.png"], request_id=1)
    if key is None:
        del body["key"]
    else:
        body["key"] = key

    status, answer = await post(http, f"{emu.modelslab_base_url}/{path}", body)

    assert status == 401
    assert answer == {"status": "error", "message": "Invalid API key"}


@pytest.mark.parametrize(
    ("path", "change", "needle"),
    [
        ("text2img", {"prompt": None}, "prompt"),
        ("text2img", {"prompt": "  "}, "prompt"),
        ("text2img", {"model_id": None}, "model_id"),
        ("text2img", {"width": 1025}, "width"),
        ("text2img", {"width": "wide"}, "width"),
        ("text2img", {"samples": 5}, "samples"),
        ("text2img", {"samples": 1.5}, "samples"),
        ("text2img", {"guidance_scale": 21}, "guidance_scale"),
        ("text2img", {"clip_skip": 9}, "clip_skip"),
        ("text2img", {"scheduler": "FastScheduler"}, "scheduler"),
        ("text2img", {"safety_checker": True}, "safety_checker"),
        ("text2img", {"safety_checker_type": "censor"}, "safety_checker_type"),
        ("text2img", {"lora_model": "a,b", "lora_strength": "0.5,2"}, "lora_strength"),
        ("nano_banana/img2img", {"ref_image": None}, "ref_image"),
        ("nano_banana/img2img", {"ref_image": [1, 2]}, "ref_image"),
        ("nano_banana/multi_ref", {"ref_image": "http://127.0.0.1/a.png"}, "ref_image"),
        ("nano_banana/multi_ref", {"width": 1000}, "width"),
        ("nano_banana/multi_ref", {"height": 2080}, "height"),
        ("nano_banana/multi_ref", {"seed": 4_294_967_296}, "seed"),
        ("nano_banana/multi_ref", {"noise_scale_start": 31}, "noise_scale_start"),
        ("nano_banana/multi_ref", {"noise_clip_std": "11"}, "noise_clip_std"),
        ("nano_banana/multi_ref", {"base64": "true"}, "base64"),
    ],
)
async def test_modelslab_validation(emu, http, path, change, needle):
    url = await reference(emu)
    body = {"key": ML_KEY, "model_id": "m", "prompt": "p", "ref_image": [url]}
    body.update(change)

    status, answer = await post(http, f"{emu.modelslab_base_url}/{path}", body)

    assert status == 400
    assert answer["status"] == "error"
    assert needle in answer["message"]
    assert emu.requests[0].json == body  # invalid requests are recorded too


async def test_modelslab_rejects_non_json(emu, http):
    async with http.post(f"{emu.modelslab_base_url}/text2img", data=b"key=x") as resp:
        assert resp.status == 400
        assert (await resp.json())["status"] == "error"
    assert emu.requests[0].json is None
    assert emu.requests[0].body == b"key=x"


@pytest.mark.parametrize("case", ["missing", "not_image", "external", "one_bad_of_two"])
async def test_unable_to_fetch_reference(emu, http, case):
    good = await reference(emu)
    bad = {
        "missing": emu.base_url + "/refs/nope.png",
        "not_image": emu.add_reference("t.txt", b"hello", "text/plain"),
        "external": "https://assets.modelslab.ai/generations/x.jpg",
        "one_bad_of_two": emu.add_reference("bad.png", b"\x89PNG\r\n\x1a\nbroken"),
    }[case]

    status, body = await post(
        http,
        f"{emu.modelslab_base_url}/nano_banana/multi_ref",
        {"key": ML_KEY, "prompt": "p", "ref_image": [good, bad]},
    )

    assert status == 200  # error at HTTP 200: clients must branch on the body
    assert body == {"status": "error", "message": "Unable to fetch image from provided URL"}


async def test_base64_output_from_request_flag(emu, http):
    _, body = await post(
        http, f"{emu.modelslab_base_url}/text2img", text2img_body(base64="yes", width=64, height=32)
    )

    assert body["status"] == "success"
    data = base64.b64decode(body["output"][0], validate=True)
    assert await image_size(data) == (64, 32)


async def test_base64_forced_and_as_url(emu, http):
    emu.script("text2img", Success(base64=True), Success(base64=True, base64_url=True))
    endpoint = f"{emu.modelslab_base_url}/text2img"

    _, inline = await post(http, endpoint, text2img_body(width=40, height=40))
    assert await image_size(base64.b64decode(inline["output"][0])) == (40, 40)

    _, linked = await post(http, endpoint, text2img_body(width=40, height=40))
    url = linked["output"][0]
    assert url.startswith(emu.base_url) and url.endswith(".base64")
    status, text = await download(http, url)
    assert status == 200
    assert await image_size(base64.b64decode(text)) == (40, 40)


async def test_base64_false_overrides_request(emu, http):
    emu.script("text2img", Success(base64=False, nsfw=True))
    _, body = await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body(base64="yes"))
    assert body["output"][0].startswith("http://127.0.0.1")
    assert body["nsfw_content_detected"] is True


# ----------------------------------------------------------------------------- polling


async def test_processing_then_fetch_result(emu, http):
    emu.script("text2img", Processing(polls=3, eta=0.01))

    status, queued = await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body())
    assert status == 200
    assert queued["status"] == "processing"
    assert queued["message"] == "Try to fetch request after given estimated time"
    assert queued["eta"] == 0.01 and queued["output"] == []
    job_id = queued["id"]
    assert queued["fetch_result"] == f"{emu.base_url}/api/v1/enterprise/fetch/{job_id}"
    assert queued["meta"]["W"] == 512
    future = queued["future_links"][0]
    assert (await download(http, future))[0] == 404  # not generated yet

    answers = [await post(http, queued["fetch_result"], {"key": ML_KEY}) for _ in range(3)]
    assert [a[1]["status"] for a in answers] == ["processing", "processing", "success"]
    done = answers[-1][1]
    assert done["id"] == job_id
    assert done["output"] == [future]
    status, data = await download(http, future)
    assert status == 200 and await image_size(data) == (512, 512)

    # A finished job keeps answering the same success.
    assert (await post(http, queued["fetch_result"], {"key": ML_KEY}))[1] == done
    assert [r.json for r in emu.requests_to("fetch")] == [{"key": ML_KEY}] * 4


async def test_processing_misspelled_without_fetch_result_uses_fallbacks(emu, http):
    emu.script("text2img", Processing(polls=2, misspell=True, fetch_result=False))
    emu.script("multi_ref", Processing(polls=1, fetch_result=False, then=Success(base64=True)))
    url = await reference(emu)

    _, queued = await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body())
    assert "fetch_result" not in queued and "message" not in queued
    assert queued["messege"] == "Try to fetch request after given estimated time"
    fetch = f"{emu.modelslab_base_url}/fetch"
    _, first = await post(http, fetch, {"key": ML_KEY, "request_id": queued["id"]})
    _, second = await post(http, fetch, {"key": ML_KEY, "request_id": str(queued["id"])})
    assert (first["status"], second["status"]) == ("processing", "success")

    _, queued = await post(
        http,
        f"{emu.modelslab_base_url}/nano_banana/multi_ref",
        {"key": ML_KEY, "prompt": "p", "ref_image": [url], "width": 1024, "height": 1024},
    )
    _, done = await post(
        http, f"{emu.modelslab_base_url}/nano_banana/fetch/{queued['id']}", {"key": ML_KEY}
    )
    assert done["status"] == "success"
    assert await image_size(base64.b64decode(done["output"][0])) == (1024, 1024)


async def test_each_fetch_route_knows_only_its_own_jobs(emu, http):
    emu.script("text2img", Processing(polls=2))
    emu.script("img2img", Processing(polls=2))
    url = await reference(emu)
    _, text_job = await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body())
    _, nano_job = await post(
        http,
        f"{emu.modelslab_base_url}/nano_banana/img2img",
        {"key": ML_KEY, "prompt": "p", "ref_image": url},
    )
    nano_fetch = f"{emu.modelslab_base_url}/nano_banana/fetch"
    assert nano_job["fetch_result"] == f"{nano_fetch}/{nano_job['id']}"
    assert text_job["fetch_result"] == f"{emu.modelslab_base_url}/fetch/{text_job['id']}"

    # Polled at the other endpoint's route, neither job exists.
    wrong = [
        await post(http, f"{emu.modelslab_base_url}/fetch/{nano_job['id']}", {"key": ML_KEY}),
        await post(
            http,
            f"{emu.modelslab_base_url}/fetch",
            {"key": ML_KEY, "request_id": nano_job["id"]},
        ),
        await post(http, f"{nano_fetch}/{text_job['id']}", {"key": ML_KEY}),
    ]
    assert [status for status, _ in wrong] == [404, 404, 404]

    right = [
        await post(http, text_job["fetch_result"], {"key": ML_KEY}),
        await post(http, nano_job["fetch_result"], {"key": ML_KEY}),
    ]
    assert [(status, body["status"]) for status, body in right] == [(200, "processing")] * 2
    assert len(emu.requests_to("fetch")) == 3
    assert len(emu.requests_to("nano_fetch")) == 2


async def test_processing_then_error_and_unknown_job(emu, http):
    emu.script("text2img", Processing(then=Error(200, "Generation failed", status_word="failed")))

    _, queued = await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body())
    status, body = await post(http, queued["fetch_result"], {"key": ML_KEY})
    assert (status, body) == (200, {"status": "failed", "message": "Generation failed"})
    assert (await download(http, queued["future_links"][0]))[0] == 404

    status, body = await post(http, f"{emu.modelslab_base_url}/fetch/1", {"key": ML_KEY})
    assert status == 404 and body["status"] == "error"
    status, body = await post(http, f"{emu.modelslab_base_url}/fetch", {"key": ML_KEY})
    assert status == 400 and "request_id" in body["message"]


async def test_scripted_fetch_failures_do_not_use_up_polls(emu, http):
    emu.script("text2img", Processing(polls=2))
    emu.script("fetch", RateLimited(), Processing())

    _, queued = await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body())
    statuses = []
    for _ in range(4):
        code, body = await post(http, queued["fetch_result"], {"key": ML_KEY})
        statuses.append((code, body["status"]))
    assert statuses == [(429, "error"), (200, "processing"), (200, "processing"), (200, "success")]


# ----------------------------------------------------------------------------- behaviours


@pytest.mark.parametrize(
    ("behaviour", "expected_status", "expected_body", "content_type"),
    [
        (Error(), 400, {"status": "error", "message": "Something went wrong"}, "application/json"),
        (
            Error(200, "Out of credits", status_word="failed", message_key="messege"),
            200,
            {"status": "failed", "messege": "Out of credits"},
            "application/json",
        ),
        (Error(402, "Insufficient credits"), 402, None, "application/json"),
        (NBError(402, "Insufficient credits"), 402, {"error": "Insufficient credits"}, None),
        (
            RateLimited(retry_after=0.5),
            429,
            {
                "status": "error",
                "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
                "retry_after": 0.5,
            },
            None,
        ),
        (ServerError(502), 502, b"<html>502 Bad Gateway</html>", "text/html"),
        (Garbage(), 200, b"not json", "application/json"),
        (Status("failed"), 200, None, "application/json"),
    ],
)
async def test_failure_behaviours(
    emu, http, behaviour, expected_status, expected_body, content_type
):
    emu.script("text2img", behaviour)

    async with http.post(f"{emu.modelslab_base_url}/text2img", json=text2img_body()) as resp:
        raw = await resp.read()
        assert resp.status == expected_status
        if content_type:
            assert resp.content_type == content_type
    if isinstance(expected_body, bytes):
        assert raw == expected_body
    elif expected_body is not None:
        assert json.loads(raw) == expected_body
    if isinstance(behaviour, Status):
        body = json.loads(raw)
        assert body["status"] == "failed" and body["message"]
    # Consumed once, then the default success again.
    assert (await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body()))[1][
        "status"
    ] == "success"


async def test_failure_preempts_key_check(emu, http):
    emu.script("text2img", ServerError(503))
    async with http.post(f"{emu.modelslab_base_url}/text2img", json={"key": "wrong"}) as resp:
        assert resp.status == 503


async def test_script_is_fifo_per_endpoint(emu, http):
    emu.script("text2img", Error(500), RateLimited())
    emu.script("text2img", Garbage(body=b"{"))
    assert len(emu.pending_script("text2img")) == 3
    codes = []
    for _ in range(4):
        async with http.post(f"{emu.modelslab_base_url}/text2img", json=text2img_body()) as resp:
            codes.append(resp.status)
            await resp.read()
    assert codes == [500, 429, 200, 200]
    assert emu.pending_script("text2img") == ()
    with pytest.raises(ValueError, match="unknown endpoint"):
        emu.script("txt2img", Success())


async def test_hang_makes_client_time_out(emu, http):
    emu.script("text2img", Hang())
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await http.post(
            f"{emu.modelslab_base_url}/text2img",
            json=text2img_body(),
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    assert time.monotonic() - started < 2


async def test_short_hang_then_answers(emu, http):
    emu.script("text2img", Hang(0.05))
    status, body = await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body())
    assert status == 200 and body["status"] == "success"


async def test_latency_option(http):
    async with ProviderEmulator(latency=0.2) as emu:
        started = time.monotonic()
        await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body())
        assert time.monotonic() - started >= 0.2


# ----------------------------------------------------------------------------- result files


async def _text2img_output(emu, http, success: Success) -> str:
    emu.script("text2img", success)
    _, body = await post(
        http, f"{emu.modelslab_base_url}/text2img", text2img_body(width=64, height=64)
    )
    return str(body["output"][0])


async def test_result_404(emu, http):
    url = await _text2img_output(emu, http, Success(result="404"))
    assert (await download(http, url))[0] == 404


@pytest.mark.parametrize("result", ["corrupt", "truncated"])
async def test_result_undecodable(emu, http, result):
    url = await _text2img_output(emu, http, Success(result=result))
    async with http.get(url) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
        data = await resp.read()
    with pytest.raises(Exception):  # noqa: B017 - any decoder error will do
        await image_size(data)


@pytest.mark.parametrize("declared", [False, True])
async def test_result_huge_streams_until_client_stops(emu, http, declared):
    url = await _text2img_output(emu, http, Success(result="huge_declared" if declared else "huge"))
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.content_length == (200_000_000 if declared else None)
        received = 0
        first = b""
        async for chunk in resp.content.iter_chunked(1 << 20):
            first = first or chunk
            received += len(chunk)
            if received > 5_000_000:
                break
        resp.close()
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    assert received > 5_000_000
    # The handler notices the disconnect and the emulator keeps serving.
    assert (await post(http, f"{emu.modelslab_base_url}/text2img", text2img_body()))[0] == 200


async def test_result_slow_stalls_after_headers(emu, http):
    url = await _text2img_output(emu, http, Success(result="slow"))
    async with http.get(url, timeout=aiohttp.ClientTimeout(sock_read=0.2)) as resp:
        assert resp.status == 200
        with pytest.raises(asyncio.TimeoutError):
            await resp.read()


async def test_result_garbage_url(emu, http):
    url = await _text2img_output(emu, http, Success(result="garbage_url"))
    assert not url.startswith("http")


async def test_scripted_file_downloads(emu, http):
    url = await _text2img_output(emu, http, Success())
    emu.script("file", ServerError(503), Success(result="404"))
    assert (await download(http, url))[0] == 503
    assert (await download(http, url))[0] == 404
    status, data = await download(http, url)
    assert status == 200 and await image_size(data) == (64, 64)
    assert [r.endpoint for r in emu.requests[-3:]] == ["file"] * 3


async def test_disconnects_are_quiet(emu, http, caplog):
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    emu.script("text2img", Hang())
    with pytest.raises(asyncio.TimeoutError):
        await http.post(
            f"{emu.modelslab_base_url}/text2img",
            json=text2img_body(),
            timeout=aiohttp.ClientTimeout(total=0.1),
        )
    url = await _text2img_output(emu, http, Success(result="huge"))
    async with http.get(url) as resp:
        await resp.content.read(1000)
        resp.close()
    # Closing waits for every handler (the hung one, the abandoned stream) to
    # end: whatever they would log is logged by then.
    await emu.close()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# ----------------------------------------------------------------------------- Nano Banana Pro


@pytest.mark.parametrize(
    ("size", "aspect", "expected"),
    [
        ("1k", "16:9", (1024, 576)),
        ("2k", None, (2048, 2048)),
        (None, "9:16", (576, 1024)),
        ("4k", "21:9", (4096, 1755)),
    ],
)
async def test_nbpro_json_success(emu, http, size, aspect, expected):
    body: dict[str, Any] = {"prompt": "a garden"}
    if size:
        body["size"] = size
    if aspect:
        body["aspectRatio"] = aspect

    async with http.post(
        f"{emu.nanobanana_base_url}/api/ai/nano-banana/generate", json=body, headers=NB_AUTH
    ) as resp:
        assert resp.status == 200
        answer = await resp.json()

    assert answer["model"] == f"nano-banana-2-{size or '1k'}"
    assert abs(answer["created"] - time.time()) < 60
    assert len(answer["images"]) == 1
    status, data = await download(http, answer["images"][0]["url"])
    assert status == 200 and await image_size(data) == expected


async def test_nbpro_json_reference_urls_are_fetched(emu, http):
    urls = [await reference(emu, "a.png"), await reference(emu, "b.png")]
    endpoint = f"{emu.base_url}/api/ai/nano-banana/generate"

    async with http.post(endpoint, json={"prompt": "mix", "image": urls}, headers=NB_AUTH) as resp:
        assert resp.status == 200
    async with http.post(
        endpoint, json={"prompt": "one", "image": urls[0]}, headers=NB_AUTH
    ) as resp:
        assert resp.status == 200
    assert len(emu.requests_to("ref")) == 3

    missing = f"{emu.base_url}/refs/missing.png"
    async with http.post(
        endpoint, json={"prompt": "p", "image": [missing]}, headers=NB_AUTH
    ) as resp:
        assert resp.status == 400
        assert "missing.png" in (await resp.json())["error"]


async def test_nbpro_multipart_upload_is_recorded(emu, http):
    png = await asyncio.to_thread(make_png, 40, 30)
    form = aiohttp.FormData()
    form.add_field("prompt", "vintage film")
    form.add_field("size", "2k")
    form.add_field("aspectRatio", "3:2")
    form.add_field("image", png, filename="one.png", content_type="image/png")

    async with http.post(
        f"{emu.base_url}/api/ai/nano-banana/generate", data=form, headers=NB_AUTH
    ) as resp:
        assert resp.status == 200
        answer = await resp.json()

    _, data = await download(http, answer["images"][0]["url"])
    assert await image_size(data) == (2048, 1365)
    [recorded] = emu.requests_to("nbpro")
    assert recorded.form == {"prompt": ["vintage film"], "size": ["2k"], "aspectRatio": ["3:2"]}
    assert [(f.field, f.filename, f.content_type, f.data) for f in recorded.files] == [
        ("image", "one.png", "image/png", png),
    ]
    assert recorded.header("authorization") == "Bearer sk-test-key"
    assert recorded.json is None


async def test_nbpro_refuses_repeated_image_parts(emu, http):
    # The seed documents one uploaded file; several images only as a URL array.
    png = await asyncio.to_thread(make_png, 40, 30)
    form = aiohttp.FormData()
    form.add_field("prompt", "two uploads")
    form.add_field("image", png, filename="one.png", content_type="image/png")
    form.add_field("image", png, filename="two.png", content_type="image/png")

    async with http.post(
        f"{emu.base_url}/api/ai/nano-banana/generate", data=form, headers=NB_AUTH
    ) as resp:
        assert resp.status == 400
        assert "array of URLs" in (await resp.json())["error"]
    assert len(emu.requests_to("nbpro")[0].files) == 2


async def test_nbpro_refuses_oversized_url_reference(http):
    png = await asyncio.to_thread(make_png, 64, 64)
    async with ProviderEmulator(nb_max_image_bytes=len(png) - 1) as emu:
        url = emu.add_reference("big.png", png)
        async with http.post(
            f"{emu.base_url}/api/ai/nano-banana/generate",
            json={"prompt": "p", "image": [url]},
            headers=NB_AUTH,
        ) as resp:
            assert resp.status == 400
            assert "maximum image size" in (await resp.json())["error"]


async def test_nbpro_rejects_oversized_upload(emu, http):
    blob = b"\x89PNG\r\n\x1a\n" + bytes(2_500_001)
    form = aiohttp.FormData()
    form.add_field("prompt", "p")
    form.add_field("image", io.BytesIO(blob), filename="big.png", content_type="image/png")

    async with http.post(
        f"{emu.base_url}/api/ai/nano-banana/generate", data=form, headers=NB_AUTH
    ) as resp:
        assert resp.status == 400
        assert "2.5MB" in (await resp.json())["error"]
    assert len(emu.requests_to("nbpro")[0].files[0].data) == len(blob)


async def test_nbpro_limits_are_configurable(http):
    png = await asyncio.to_thread(make_png, 64, 64)
    async with ProviderEmulator(nb_max_references=2, nb_max_image_bytes=len(png)) as emu:
        endpoint = f"{emu.base_url}/api/ai/nano-banana/generate"

        urls = [emu.add_reference(f"{name}.png", png) for name in ("a", "b", "c")]
        async with http.post(
            endpoint, json={"prompt": "p", "image": urls}, headers=NB_AUTH
        ) as resp:
            assert resp.status == 400
            assert "maximum is 2" in (await resp.json())["error"]

        form = aiohttp.FormData()
        form.add_field("prompt", "p")
        form.add_field("image", png + b"x", filename="a.png", content_type="image/png")
        async with http.post(endpoint, data=form, headers=NB_AUTH) as resp:
            assert resp.status == 400

        form = aiohttp.FormData()
        form.add_field("prompt", "p")
        form.add_field("image", png, filename="a.png", content_type="image/png")
        async with http.post(endpoint, data=form, headers=NB_AUTH) as resp:
            assert resp.status == 200


async def test_nbpro_rejects_non_image_upload(emu, http):
    form = aiohttp.FormData()
    form.add_field("prompt", "p")
    form.add_field("image", b"GIF89a nope", filename="x.gif", content_type="image/gif")
    async with http.post(
        f"{emu.base_url}/api/ai/nano-banana/generate", data=form, headers=NB_AUTH
    ) as resp:
        assert resp.status == 400
        assert "error" in await resp.json()


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "sk-test-key"}]
)
async def test_nbpro_bad_key(emu, http, headers):
    async with http.post(
        f"{emu.base_url}/api/ai/nano-banana/generate", json={"prompt": "p"}, headers=headers
    ) as resp:
        assert resp.status == 401
        assert await resp.json() == {"error": "Missing or invalid API key"}


@pytest.mark.parametrize(
    "body",
    [
        {"size": "2k"},
        {"prompt": ""},
        {"prompt": "p", "size": "8k"},
        {"prompt": "p", "size": "4K"},
        {"prompt": "p", "aspectRatio": "5:4"},
        {"prompt": "p", "image": [3]},
        ["not", "an", "object"],
    ],
)
async def test_nbpro_validation(emu, http, body):
    async with http.post(
        f"{emu.base_url}/api/ai/nano-banana/generate", json=body, headers=NB_AUTH
    ) as resp:
        assert resp.status == 400
        assert set(await resp.json()) == {"error"}


async def test_nbpro_behaviours(emu, http):
    endpoint = f"{emu.base_url}/api/ai/nano-banana/generate"
    emu.script(
        "nbpro",
        RateLimited(retry_after=0.25, nb=True),
        NBError(500, "Generation failed"),
        Processing(polls=2, eta=0.01),
        Success(result="404"),
    )

    async with http.post(endpoint, json={"prompt": "p"}, headers=NB_AUTH) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "0.25"
        assert await resp.json() == {"error": "Rate limit exceeded"}
    async with http.post(endpoint, json={"prompt": "p"}, headers=NB_AUTH) as resp:
        assert (resp.status, await resp.json()) == (500, {"error": "Generation failed"})
    async with http.post(endpoint, json={"prompt": "p"}, headers=NB_AUTH) as resp:
        assert resp.status == 200  # synchronous API: processing is only a delay
    async with http.post(endpoint, json={"prompt": "p"}, headers=NB_AUTH) as resp:
        url = (await resp.json())["images"][0]["url"]
    assert (await download(http, url))[0] == 404


# ----------------------------------------------------------------------------- recording & misc


async def test_recording_keeps_exact_bodies_and_headers(emu, http):
    raw = b'{"key": "ml-test-key", "model_id": "m", "prompt": "p", "width": "512"}'
    async with http.post(
        f"{emu.modelslab_base_url}/text2img?trace=1",
        data=raw,
        headers={"Content-Type": "application/json", "X-Client": "imagebot/0.1"},
    ) as resp:
        assert resp.status == 200
    async with http.post(f"{emu.modelslab_base_url}/text2img", json={"key": "bad"}) as resp:
        assert resp.status == 401

    first, second = emu.requests
    assert first.method == "POST"
    assert first.path == "/api/v1/enterprise/text2img"
    assert first.endpoint == "text2img"
    assert first.body == raw
    assert first.json == json.loads(raw)
    assert first.query == {"trace": "1"}
    assert first.headers["X-Client"] == "imagebot/0.1"
    assert first.header("x-client") == "imagebot/0.1"
    assert first.header("missing") is None
    assert first.form == {} and first.files == []
    assert second.json == {"key": "bad"}
    assert second.received_at >= first.received_at
    assert emu.requests_to("text2img") == [first, second]

    emu.script("text2img", Error())
    emu.clear()
    assert emu.requests == [] and emu.pending_script("text2img") == ()


async def test_reference_route(emu, http):
    url = emu.add_reference("photo.jpg", b"jpeg-bytes", "image/jpeg")
    assert url == f"{emu.base_url}/refs/photo.jpg"
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/jpeg"
        assert await resp.read() == b"jpeg-bytes"
    assert (await download(http, f"{emu.base_url}/refs/other.jpg"))[0] == 404
    assert [r.endpoint for r in emu.requests] == ["ref", "ref"]


async def test_base_urls(emu):
    assert emu.base_url.startswith("http://127.0.0.1:")
    assert emu.modelslab_base_url == emu.base_url + "/api/v1/enterprise"
    assert emu.nanobanana_base_url == emu.base_url


async def test_photo_like_png_is_photo_sized():
    data = await asyncio.to_thread(make_png, 2048, 2048, photo_like=True)
    assert 4_000_000 <= len(data) <= 8_000_000
    assert await image_size(data) == (2048, 2048)


async def test_photo_like_emulator_serves_noise(http):
    async with ProviderEmulator(photo_like=True) as emu:
        _, body = await post(
            http, f"{emu.modelslab_base_url}/text2img", text2img_body(width=256, height=256)
        )
        _, data = await download(http, body["output"][0])
    # Noise barely compresses: far larger than the gradient of the same size.
    assert len(data) > 256 * 256 and await image_size(data) == (256, 256)
