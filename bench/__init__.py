"""The benchmark (``python -m bench``); see README.md.

The bot does not depend on discord.py's `speed` extra (orjson for JSON, zstandard
for gateway compression, aiodns and Brotli for aiohttp): it did not pay for itself
(RESULTS.md). To repeat that comparison, install it (`pip install 'discord.py[speed]'`)
and run once as is and once with BENCH_SPEED=0, which hides it from every bench
process; it acts here, before any module of the bench imports discord.py or aiohttp.
"""

import os
import sys

if os.environ.get("BENCH_SPEED") == "0":
    for _name in ("orjson", "zstandard", "aiodns", "brotli", "Brotli", "brotlicffi"):
        sys.modules[_name] = None  # type: ignore[assignment]
