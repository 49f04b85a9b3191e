"""Image fitting on one core: ``python -m bench._imagefit REPEATS`` prints one JSON line.

The bot's ``ImageProcessor.fit_for_upload`` (one worker thread, the process pinned
to one CPU by the orchestrator) builds the grid and fits four photo-like
2048×2048 PNG originals (about 7 MB each) into one 10 MiB message, as
``plan_messages`` asks first. The baseline is the part no implementation can
skip: decoding the four PNGs once, with Pillow. Both are CPU time of the process
(every thread: libvips's too), not wall time: the machines this runs on are
shared, and waiting for a core is not work.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time

from PIL import Image

LIMIT = 10 * 1024 * 1024


async def main(repeats: int) -> None:
    from bot.images import ImageProcessor
    from tests.emulators.providers import make_png

    png = make_png(2048, 2048, photo_like=True)
    processor = ImageProcessor(
        max_input_bytes=25 * 1024 * 1024, max_input_pixels=40_000_000, workers=1
    )
    results = [await processor.decode_result(png) for _ in range(4)]
    fit: list[float] = []
    decode: list[float] = []
    plan_files: list[str] = []
    try:
        # One untimed round first: imports, codec set-up.
        await processor.fit_for_upload(results, max_bytes=LIMIT, max_files=10, max_messages=1)
        for _ in range(repeats):
            started = time.process_time()
            plan = await processor.fit_for_upload(
                results, max_bytes=LIMIT, max_files=10, grid=True, max_messages=1
            )
            fit.append(time.process_time() - started)
            plan_files = [
                f"{u.filename} {u.width}x{u.height} {u.nbytes / 1e6:.2f} MB"
                for message in plan
                for u in message
            ]
            started = time.process_time()
            for result in results:
                assert result.data is not None  # decoded from memory, never kept on disk
                with Image.open(io.BytesIO(result.data)) as image:
                    image.load()
            decode.append(time.process_time() - started)
    finally:
        processor.close()
    out = {"fit": fit, "decode": decode, "png_mb": len(png) / 1e6, "plan": plan_files}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
