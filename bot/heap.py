"""The objects that live as long as the process, left out of garbage collection.

Once the bot is ready, nearly everything on its heap (modules, classes,
functions, discord.py's caches and command tree: about 80,000 objects) lives as
long as the process. Python's full collections still walked all of them every
so often: one took 75 ms in the benchmark, a pause every job in flight waited
out (bench/RESULTS.md). Frozen (``gc.freeze``, as services that care about tail
latency do), later collections walk only what was made since. The collection
just before frees the start-up's garbage, which freezing would otherwise keep.
"""

from __future__ import annotations

import gc


def freeze_long_lived() -> int:
    """Collect once, then freeze what is left; returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
