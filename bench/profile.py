"""Summarise py-spy raw profiles: ``python -m bench.profile FILE [FILE ...] [--top N]``.

Prints the share of busy samples spent in each frame (inclusive, a frame counted
once per sample) and at each leaf. Samples of threads that are only waiting for
work (a thread pool's or a database worker's queue, the selector) are left out,
so the shares are of the process's real work. ``python -m bench --profile DIR``
records the bot this way during a run.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# Leaves where a thread waits for work rather than doing any. py-spy counts a
# thread blocked inside a C call (queue.get) as active, so they are named here.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py",
    "_connection_worker_thread (aiosqlite/core.py",
    "SqliteWorker._serve (",
    "select (selectors.py",  # EpollSelector.select: the event loop waiting
    "wait (threading.py",
    "Condition.wait (threading.py",
)


def summarise(files: list[Path], top: int) -> str:
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    busy = idle = 0
    for file in files:
        for line in file.read_text(encoding="utf-8").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = stack.split(";")
            if any(idle_leaf in frames[-1] for idle_leaf in IDLE_LEAVES):
                idle += count
                continue
            busy += count
            for frame in set(frames):
                inclusive[frame] += count
            leaves[frames[-1]] += count
    if busy == 0:
        return "no busy samples"
    out = [f"{busy} busy samples ({idle} idle left out)", "", "| share | frame (inclusive) |"]
    out.append("| ---: | --- |")
    out += [f"| {100 * n / busy:.1f} % | `{frame}` |" for frame, n in inclusive.most_common(top)]
    out += ["", "| share | leaf |", "| ---: | --- |"]
    out += [f"| {100 * n / busy:.1f} % | `{frame}` |" for frame, n in leaves.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    print(summarise(args.files, args.top))


if __name__ == "__main__":
    main()
