"""The floor: the same HTTP exchanges as the bot, with plain aiohttp and nothing else.

``python -m bench._baseline ENDPOINTS_JSON``. It holds a gateway connection (plain
JSON, no compression) and, for every INTERACTION_CREATE: acknowledges it (deferred
callback), calls ModelsLab text2img, downloads the result and uploads it as the
interaction's original message with an embed (multipart). No validation, no
decoding, no ledger, no disk: what any bot must at least do to deliver one image.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import aiohttp

from bench._child import Meter, reply, run, serve


class Baseline:
    def __init__(self, endpoints: dict[str, Any]) -> None:
        self.api = endpoints["api_base"]
        self.gateway = endpoints["gateway_url"]
        self.token = endpoints["token"]
        self.ml = endpoints["modelslab_base_url"]
        self.ml_key = endpoints["modelslab_key"]
        self.application_id = ""
        self.ready = asyncio.Event()
        self.failures = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        url = f"{self.gateway}?v=10&encoding=json"
        async with session.ws_connect(url, max_msg_size=0) as ws:
            heartbeat: asyncio.Task[None] | None = None
            try:
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    payload = json.loads(msg.data)
                    op = payload["op"]
                    if op == 10:
                        interval = payload["d"]["heartbeat_interval"] / 1000
                        heartbeat = asyncio.create_task(self._heartbeat(ws, interval))
                        await ws.send_json(
                            {
                                "op": 2,
                                "d": {
                                    "token": self.token,
                                    "intents": 1,
                                    "properties": {"os": "linux", "browser": "bench"},
                                    "shard": [0, 1],
                                },
                            }
                        )
                    elif op == 0 and payload["t"] == "READY":
                        self.application_id = payload["d"]["application"]["id"]
                        self.ready.set()
                    elif op == 0 and payload["t"] == "INTERACTION_CREATE":
                        task = asyncio.create_task(self.handle(session, payload["d"]))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await ws.send_json({"op": 1, "d": None})

    async def handle(self, session: aiohttp.ClientSession, interaction: dict[str, Any]) -> None:
        try:
            await self._exchange(session, interaction)
        except Exception:
            self.failures += 1

    async def _exchange(self, session: aiohttp.ClientSession, interaction: dict[str, Any]) -> None:
        iid, token = interaction["id"], interaction["token"]
        options = {o["name"]: o["value"] for o in interaction["data"].get("options", [])}
        prompt = str(options.get("prompt", ""))
        await self._acknowledge(session, iid, token)
        url = await self._generate(session, prompt)
        data = await self._download(session, url)
        await self._upload(session, token, prompt, data)

    # One method per exchange, so that ``bench --steps`` can time each (BASELINE_STEPS).
    async def _acknowledge(self, session: aiohttp.ClientSession, iid: str, token: str) -> None:
        # The deferred callback: "thinking…".
        callback = f"{self.api}/interactions/{iid}/{token}/callback"
        async with session.post(callback, json={"type": 5}) as response:
            response.raise_for_status()
            await response.read()

    async def _generate(self, session: aiohttp.ClientSession, prompt: str) -> str:
        body = {
            "key": self.ml_key,
            "model_id": "flux",
            "prompt": prompt,
            "width": 1024,
            "height": 1024,
            "samples": 1,
            "safety_checker": "yes",
        }
        async with session.post(f"{self.ml}/text2img", json=body) as response:
            response.raise_for_status()
            result = await response.json()
        return str(result["output"][0])

    async def _download(self, session: aiohttp.ClientSession, url: str) -> bytes:
        async with session.get(url) as response:
            response.raise_for_status()
            return await response.read()

    async def _upload(
        self, session: aiohttp.ClientSession, token: str, prompt: str, data: bytes
    ) -> None:
        """The image as the interaction's original message, with an embed."""
        payload: dict[str, Any] = {
            "content": None,
            "embeds": [
                {
                    "title": "Imagine",
                    "description": prompt,
                    "image": {"url": "attachment://image_1.png"},
                }
            ],
            "attachments": [{"id": 0, "filename": "image_1.png"}],
            "allowed_mentions": {"parse": []},
        }
        form = aiohttp.FormData()
        form.add_field("payload_json", json.dumps(payload), content_type="application/json")
        form.add_field("files[0]", data, filename="image_1.png", content_type="image/png")
        original = f"{self.api}/webhooks/{self.application_id}/{token}/messages/@original"
        async with session.patch(original, data=form) as response:
            response.raise_for_status()
            await response.read()


async def main(endpoints_json: str) -> None:
    baseline = Baseline(json.loads(endpoints_json))
    steps = None
    if os.environ.get("BENCH_STEPS") == "1":  # python -m bench --steps
        from bench._steps import BASELINE_STEPS, StepTimer

        steps = StepTimer(BASELINE_STEPS)
        steps.install({"bench._baseline": sys.modules[__name__]})  # run as __main__
    meter = Meter(steps)

    async def handle(command: dict[str, Any]) -> dict[str, Any] | None:
        answer = await meter.handle(command)
        if answer is not None and command.get("cmd") == "end":
            answer["failures"] = baseline.failures
        return answer

    async with aiohttp.ClientSession() as session:
        gateway = asyncio.create_task(baseline.run(session))
        ready = asyncio.create_task(baseline.ready.wait())
        await asyncio.wait({gateway, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            raise RuntimeError("the baseline did not connect to the gateway")
        reply({"ready": True})
        try:
            await serve(handle)
        finally:
            await meter.probe.stop()
            gateway.cancel()


if __name__ == "__main__":
    run(main(sys.argv[1]))
