"""``python -m bench`` (``make bench``): every figure, bot beside baseline, one table.

See bench/README.md for what each figure means. The emulators run in this
process; the bot, the baseline script, the image-fitting and the ledger runs each
run in a child process whose own CPU and memory are what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench._e2e import Run, drive, imagine_options
from bench._proc import ROOT, Child
from bench._stats import percentile
from bench._steps import steps_table
from bench._world import TimedDiscord, TimedProviders, World, populate, small_png

CONCURRENCY = (1, 16, 64)
JOBS = {1: 30, 16: 120, 64: 240}
PACED_GENERATION = 5.0  # seconds a simulated model takes, for the latency figure
PACED_ROUNDS = 3
MEMORY_JOBS = 50
MEMORY_JOB_TIMEOUT = 400.0  # all 50 jobs finish together, when the last grid is fitted
MEMORY_BUDGET = 240.0  # seconds the memory figure may take in all (fewer repeats if slow)
LEDGER_PAIRS = 2000
LEDGER_CALLERS = 200
RESULTS = ROOT / "bench" / "RESULTS.md"


# --------------------------------------------------------------------------- statistics


# (bot median, bare script median or None, minimal discord.py median or None) ->
# (what the ratio / target cell says, whether the target is met)
Compare = Callable[[float, float | None, float | None], tuple[str, bool]]


@dataclass
class Figure:
    name: str
    unit: str
    bot: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)  # the bare aiohttp script, or as named
    minimal: list[float] = field(default_factory=list)  # the minimal discord.py bot
    target: str = ""  # shown as is
    check: Callable[[float, float], bool] | None = None  # (bot median, baseline median)
    compare: Compare | None = None  # instead of ratio/target/check, when it needs more
    ratio: bool = False  # show bot/baseline
    digits: int = 1
    note: str = ""

    def cell(self, values: list[float]) -> str:
        if not values:
            return "–"
        fmt = f"{{:.{self.digits}f}}"
        med = fmt.format(statistics.median(values))
        if len(values) == 1:
            return f"{med} (n=1)"
        return f"{med} ({fmt.format(min(values))}–{fmt.format(max(values))})"

    def row(self) -> list[str]:
        bot = statistics.median(self.bot) if self.bot else None
        base = statistics.median(self.baseline) if self.baseline else None
        minimal = statistics.median(self.minimal) if self.minimal else None
        ratio = ""
        met = "–"
        if self.compare is not None and bot is not None:
            ratio, ok = self.compare(bot, base, minimal)
            met = "met" if ok else "**MISSED**"
        else:
            if self.ratio and bot is not None and base:
                ratio = f"{bot / base:.2f}× "
            ratio += self.target
            if self.check is not None and bot is not None:
                met = "met" if self.check(bot, base or 0.0) else "**MISSED**"
        return [
            f"{self.name} ({self.unit})",
            self.cell(self.bot),
            self.cell(self.minimal),
            self.cell(self.baseline),
            ratio.strip() or "–",
            met,
        ]


def table(figures: Sequence[Figure]) -> str:
    header = ["figure", "bot", "minimal discord.py", "baseline", "ratio / target", "met?"]
    rows = [header, ["---"] * len(header)] + [f.row() for f in figures]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            kib = int(meminfo.readline().split()[1])
            memory = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load average at the end (1/5/15 min)": load,
        "cpus": str(os.cpu_count()),
        "usable cpus": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "memory": memory,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


# --------------------------------------------------------------------------- runs


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.started = time.monotonic()
        self.world: World | None = None
        self.notes: list[str] = []
        # Over the paced runs (--steps): the bot's steps, the bare script's exchanges.
        self.steps: dict[str, list[float]] = {}
        self.bare_steps: dict[str, list[float]] = {}
        scale = 0.25 if args.quick else 1.0
        self.jobs = {c: max(c, int(n * scale)) for c, n in JOBS.items()}
        self.failures = 0

    def log(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f} s] {text}", file=sys.stderr, flush=True)

    async def start_bot(self, label: str) -> Child:
        assert self.world is not None
        data = self.tmp / f"data-{label}"
        settings = self.world.bot_settings(str(data))
        child = await Child.start(
            "bench._botproc",
            json.dumps(settings),
            str(self.tmp / f"bot-{label}.log"),
            log=self.tmp / f"bot-{label}.stderr",
            profile=self.args.profile / f"bot-{label}.raw" if self.args.profile else None,
            extra_env={"BENCH_STEPS": "1"} if self.args.steps else None,
        )
        await self.world.discord.wait_until_ready()
        return child

    async def start_baseline(self, label: str) -> Child:
        assert self.world is not None
        child = await Child.start(
            "bench._baseline",
            json.dumps(self.world.endpoints()),
            log=self.tmp / f"baseline-{label}.stderr",
            extra_env={"BENCH_STEPS": "1"} if self.args.steps else None,
        )
        await self.world.discord.wait_until_ready()
        return child

    async def start_minimal(self, label: str) -> Child:
        assert self.world is not None
        child = await Child.start(
            "bench._minimal",
            json.dumps(self.world.endpoints()),
            log=self.tmp / f"minimal-{label}.stderr",
        )
        await self.world.discord.wait_until_ready()
        return child

    def count(self, run: Run, what: str) -> Run:
        if run.failures:
            self.failures += run.failures
            self.notes.append(f"{what}: {run.failures} of {run.jobs} jobs failed or timed out")
        return run

    async def e2e(self, figures: dict[str, Figure]) -> None:
        """Saturation with an instant provider, then 64 members at a paced provider."""
        assert self.world is not None
        world = self.world
        world.providers.photo_like = True
        for rep in range(self.args.repeats):
            for subject in self.args.subjects.split(","):
                label = f"e2e-{rep}"
                starter = {
                    "bot": self.start_bot,
                    "minimal": self.start_minimal,
                    "baseline": self.start_baseline,
                }[subject]
                child = await starter(label)
                try:
                    world.providers.generation_time = 0.0
                    await drive(
                        world, child, jobs=10, concurrency=2, command="imagine",
                        options=imagine_options(f"warm{rep}"),
                    )  # fmt: skip
                    for c in CONCURRENCY:
                        run = self.count(
                            await drive(
                                world,
                                child,
                                jobs=self.jobs[c],
                                concurrency=c,
                                command="imagine",
                                options=imagine_options(f"{subject}{rep}c{c}"),
                            ),
                            f"{subject} @{c}",
                        )
                        side = subject
                        getattr(figures[f"rate{c}"], side).append(run.per_second)
                        getattr(figures[f"cpu{c}"], side).append(run.cpu_per_job * 1000)
                        if c == 64:
                            getattr(figures["sat_p50"], side).append(
                                percentile(run.added, 50) * 1000
                            )
                            getattr(figures["sat_p99"], side).append(
                                percentile(run.added, 99) * 1000
                            )
                            getattr(figures["sat_lag"], side).append(percentile(run.lag, 99) * 1000)
                        self.log(
                            f"{subject} rep {rep + 1} @{c}: {run.per_second:.1f} images/s, "
                            f"{run.cpu_per_job * 1000:.1f} ms CPU/job, "
                            f"added p50 {percentile(run.added, 50) * 1000:.0f} ms"
                        )
                    world.providers.generation_time = self.args.generation
                    run = self.count(
                        await drive(
                            world,
                            child,
                            jobs=64 * self.args.rounds,
                            concurrency=64,
                            command="imagine",
                            options=imagine_options(f"{subject}{rep}paced"),
                            stagger=self.args.generation / 64,
                        ),
                        f"{subject} paced",
                    )
                    side = subject
                    gathered = self.bare_steps if subject == "baseline" else self.steps
                    for label, durations in run.steps.items():
                        gathered.setdefault(label, []).extend(durations)
                    getattr(figures["p50"], side).append(percentile(run.added, 50) * 1000)
                    getattr(figures["p99"], side).append(percentile(run.added, 99) * 1000)
                    getattr(figures["lag"], side).append(percentile(run.lag, 99) * 1000)
                    self.log(
                        f"{subject} rep {rep + 1} paced @64: "
                        f"{run.cpu_per_job * 1000:.1f} ms CPU/job, added p50 "
                        f"{percentile(run.added, 50) * 1000:.1f} ms, p99 "
                        f"{percentile(run.added, 99) * 1000:.1f} ms, lag p99 "
                        f"{percentile(run.lag, 99) * 1000:.1f} ms"
                    )
                finally:
                    world.providers.generation_time = 0.0
                    await child.quit()

    async def memory(self, figure: Figure, job_cpu: Figure) -> None:
        """A fresh bot per repeat; 50 /edit jobs of 4 samples at 2048×2048, all at once."""
        assert self.world is not None
        world = self.world
        world.providers.photo_like = True
        reference = small_png()
        began = time.monotonic()
        for rep in range(self.args.repeats):
            child = await self.start_bot(f"memory-{rep}")
            try:
                attachment = world.discord.add_attachment(
                    world.channel_id, reference, "reference.png", "image/png"
                )

                def options(
                    n: int, rep: int = rep, attachment: dict[str, Any] = attachment
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
                    return (
                        [
                            {"name": "prompt", "type": 3, "value": f"memory {rep} {n}"},
                            {"name": "aspect_ratio", "type": 3, "value": "1:1"},
                            {"name": "samples", "type": 4, "value": 4},
                        ],
                        {"image": attachment},
                    )

                run = self.count(
                    await drive(
                        world,
                        child,
                        jobs=self.args.memory_jobs,
                        concurrency=self.args.memory_jobs,
                        command="edit",
                        options=options,
                        job_timeout=MEMORY_JOB_TIMEOUT,
                    ),
                    "memory",
                )
            finally:
                await child.quit()
            figure.bot.append(run.peak_rss_kib / 1024)
            figure.baseline.append(run.rss_before_kib / 1024)
            job_cpu.bot.append(run.cpu_per_job * 1000)
            self.log(
                f"memory rep {rep + 1}: peak {run.peak_rss_kib / 1024:.0f} MB "
                f"(at rest {run.rss_before_kib / 1024:.0f} MB), {run.wall:.0f} s, "
                f"{run.cpu_per_job:.2f} s CPU/job"
            )
            spent = time.monotonic() - began
            if rep + 1 < self.args.repeats and spent / (rep + 1) * (rep + 2) > MEMORY_BUDGET:
                self.notes.append(
                    f"memory: {rep + 1} repeat(s) only, each took {spent / (rep + 1):.0f} s"
                )
                break

    async def fit(self, figure: Figure) -> None:
        cpu = min(os.sched_getaffinity(0))
        result = await self._oneshot(
            "bench._imagefit", str(max(3, self.args.repeats)), cpus={cpu}, label="imagefit"
        )
        figure.bot.extend(t * 1000 for t in result["fit"])
        figure.baseline.extend(t * 1000 for t in result["decode"])
        figure.note = "plan: " + ", ".join(result["plan"])
        self.log(f"image fitting: {statistics.median(result['fit']) * 1000:.0f} ms")

    async def ledger(self, figure: Figure) -> None:
        for rep in range(self.args.repeats):
            result = await self._oneshot(
                "bench._ledger",
                str(self.args.ledger_pairs),
                str(LEDGER_CALLERS),
                label=f"ledger-{rep}",
            )
            figure.bot.append(result["bot"])
            figure.baseline.append(result["baseline"])
            self.log(f"ledger rep {rep + 1}: {result['bot']:.0f} vs {result['baseline']:.0f}/s")

    async def _oneshot(
        self, module: str, *args: str, label: str, cpus: set[int] | None = None
    ) -> dict[str, Any]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.tmp / f"{label}.stderr", "ab") as stderr:  # noqa: ASYNC230 - a log file
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *args,
                stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=str(ROOT), env=env,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )  # fmt: skip
            out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{module} failed; see {self.tmp / f'{label}.stderr'}")
        answer: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return answer


def make_figures(args: argparse.Namespace) -> dict[str, Figure]:
    def at_most(limit: float) -> Callable[[float, float], bool]:
        return lambda bot, _base: bot <= limit

    def cpu_target(bot: float, bare: float | None, minimal: float | None) -> tuple[str, bool]:
        # The targets: ≤ 2× the bare script and ≤ 1.3× minimal discord.py.
        parts, ok = [], True
        if bare:
            parts.append(f"{bot / bare:.2f}× bare (≤ 2×)")
            ok = ok and bot <= 2 * bare
        if minimal:
            parts.append(f"{bot / minimal:.2f}× d.py (≤ 1.3×)")
            ok = ok and bot <= 1.3 * minimal
        return ", ".join(parts), ok and bool(bare) and bool(minimal)

    def added_within(limit: float) -> Compare:
        def compare(bot: float, bare: float | None, _minimal: float | None) -> tuple[str, bool]:
            if bare is None:
                return "–", False
            return f"+{bot - bare:.1f} ms over bare (≤ +{limit:g} ms)", bot - bare <= limit

        return compare

    figures: dict[str, Figure] = {}
    for c in CONCURRENCY:
        figures[f"rate{c}"] = Figure(f"Images delivered per second @{c}", "1/s", ratio=True)
    for c in CONCURRENCY:
        figures[f"cpu{c}"] = Figure(f"Bot CPU per job @{c}", "ms", compare=cpu_target, digits=2)
    gen = f"{args.generation:g} s model"
    figures["p50"] = Figure(f"Added latency p50 @64, {gen}", "ms", compare=added_within(5))
    figures["p99"] = Figure(f"Added latency p99 @64, {gen}", "ms", compare=added_within(20))
    figures["lag"] = Figure(
        f"Event-loop lag p99 @64, {gen}", "ms", target="≤ 20 ms", check=at_most(20)
    )
    figures["sat_p50"] = Figure("Added latency p50 @64, instant (saturated)", "ms", digits=0)
    figures["sat_p99"] = Figure("Added latency p99 @64, instant (saturated)", "ms", digits=0)
    figures["sat_lag"] = Figure(
        "Event-loop lag p99 @64, instant (saturated)",
        "ms",
        target="≤ 20 ms",
        check=at_most(20),
    )
    figures["memory"] = Figure(
        f"Peak RSS, {args.memory_jobs} jobs × 4 × 2048² photo-like (baseline: bot at rest)",
        "MB",
        target="≤ 150 MB",
        check=at_most(150),
        digits=0,
    )
    figures["job_cpu"] = Figure(
        "CPU per four-image 2048² job, in the memory run "
        "(baseline: Pillow decoding the four, from the fitting figure)",
        "ms",
        ratio=True,
        target="≤ 500 ms",
        check=at_most(500),
        digits=0,
    )
    figures["fit"] = Figure(
        "Grid + fit 4 × 2048² (7 MB PNGs) into 10 MiB, CPU on 1 core "
        "(baseline: Pillow decoding them)",
        "ms",
        ratio=True,
        target="≤ 1.25×",
        check=lambda bot, base: base > 0 and bot <= 1.25 * base,
        digits=0,
    )
    figures["ledger"] = Figure(
        f"Ledger reserve+settle pairs/s, {LEDGER_CALLERS} callers (baseline: plain sqlite3)",
        "1/s",
        ratio=True,
        target="≥ 0.8×",
        check=lambda bot, base: bot >= 0.8 * base,
        digits=0,
    )
    return figures


def report(figures: dict[str, Figure], bench: Bench, args: argparse.Namespace) -> str:
    info = machine()
    lines = [
        "# Benchmark results",
        "",
        "Produced by `make bench` (`python -m bench`); see [README.md](README.md) for what each",
        "figure means. Cells are medians over the repeats, (min–max) in brackets.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()),
        "",
        f"Settings: {args.repeats} repeats; jobs per run "
        + ", ".join(f"{bench.jobs[c]} @{c}" for c in CONCURRENCY)
        + f"; paced runs {args.rounds} × 64 jobs with a {args.generation:g} s model;"
        f" memory {args.memory_jobs} jobs; ledger {args.ledger_pairs} pairs.",
        "",
        table([f for f in figures.values() if f.bot or f.baseline]),
        "",
    ]
    notes = [f"{f.name}: {f.note}" for f in figures.values() if f.note] + bench.notes
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    if bench.steps:
        lines += [
            "Steps of the bot's jobs in the paced runs (`--steps`; wall time, every call):",
            "",
            steps_table(bench.steps, bench.bare_steps),
            "",
        ]
    return "\n".join(lines)


ANALYSIS_MARKER = "<!-- analysis: kept when the table is rewritten -->"


def kept_analysis() -> str:
    """The hand-written part of RESULTS.md (profiles of the misses), from its marker on."""
    try:
        previous = RESULTS.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    at = previous.find(ANALYSIS_MARKER)
    return "\n" + previous[at:] if at >= 0 else ""


async def amain(args: argparse.Namespace) -> int:
    only = set(args.only.split(",")) if args.only else {"e2e", "memory", "fit", "ledger"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    bench = Bench(args, tmp)
    figures = make_figures(args)
    bench.log(f"logs in {tmp}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    try:
        if "fit" in only:
            await bench.fit(figures["fit"])
        if "ledger" in only:
            await bench.ledger(figures["ledger"])
        if only & {"e2e", "memory"}:
            from tests.emulators.providers import make_png

            async with (
                TimedDiscord(validate_spec=False) as discord,
                TimedProviders(photo_like=True) as providers,
            ):
                guild_id, channel_id, members = populate(discord, 64)
                bench.world = World(discord, providers, guild_id, channel_id, members)
                # Render the provider's images once, before anything is timed.
                await asyncio.to_thread(make_png, 1024, 1024, photo_like=True)
                if "memory" in only:
                    await asyncio.to_thread(make_png, 2048, 2048, photo_like=True)
                if "e2e" in only:
                    await bench.e2e(figures)
                if "memory" in only:
                    await bench.memory(figures["memory"], figures["job_cpu"])
                if figures["fit"].baseline:
                    figures["job_cpu"].baseline = list(figures["fit"].baseline)
    finally:
        text = report(figures, bench, args)
        print(text)
        if not (args.no_write or args.steps) and only == {"e2e", "memory", "fit", "ledger"}:
            RESULTS.write_text(text + kept_analysis(), encoding="utf-8")
            bench.log(f"wrote {RESULTS.relative_to(ROOT)}")
    bench.log("done")
    if not args.keep_logs and not bench.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="repeats per figure (3)")
    parser.add_argument("--quick", action="store_true", help="a quarter of the jobs per run")
    parser.add_argument("--only", default="", help="comma-separated: e2e,memory,fit,ledger")
    parser.add_argument("--generation", type=float, default=PACED_GENERATION)
    parser.add_argument("--rounds", type=int, default=PACED_ROUNDS)
    parser.add_argument("--memory-jobs", type=int, default=MEMORY_JOBS)
    parser.add_argument("--ledger-pairs", type=int, default=LEDGER_PAIRS)
    parser.add_argument(
        "--subjects",
        default="bot,minimal,baseline",
        help="e2e: which of bot,minimal,baseline to run (all three for the table)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--keep-logs", action="store_true", help="keep the children's logs")
    parser.add_argument(
        "--steps",
        action="store_true",
        help="time each step of the bot's jobs and print their medians (bench/_steps.py);"
        " RESULTS.md is left as it is",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record each bot process with py-spy into DIR (summarise: python -m bench.profile)",
    )
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
