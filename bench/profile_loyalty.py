"""Where storestream's loyalty path spends its time: py-spy on a real worker under the workload.

``python -m bench.profile_loyalty [--events N] [--seconds S]`` starts the embedded stack,
produces the benchmark workload, starts ``faust -A app worker`` and, once it is processing
purchases, samples it twice with py-spy (``pip install py-spy``):

1. wall clock (``--idle``): every thread, waiting included, to see where time passes;
2. GIL held (``--gil``): only samples where a thread runs Python code, i.e. CPU work.

Both are saved as speedscope files (open them at https://www.speedscope.app) and summarised
into ``bench/results/profile-data.txt``: per-thread split, top functions by self and total time,
and the share of each stage of the path (decode, rules, table writes, changelog, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.dev.devstack import DevStack, free_port
from bench.deploy import BenchError, StoreDeployment, StoreWorker
from bench.run import RESULTS, machine_info
from bench.workload import build, log, produce_workload

#: Stages: (label, frame patterns, thread or None). A sample counts for a stage when its
#: stack has a frame containing a pattern ("A > B": B called directly by A).
STAGES: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("fast lane dispatch (app.runtime.transport.Consumer.getmany/_run_lane)",
     ("Consumer.getmany (app/runtime/transport.py",
      "Consumer._run_lane (app/runtime/transport.py"), None),
    ("  purchases batch handler, all of it (apply_purchases)",
     ("apply_purchases (agents/loyalty.py",), None),
    ("    decode + validate (parse_purchase, orjson)", ("parse_purchase (core/events.py",), None),
    ("    loyalty rules (core.loyalty.apply_purchase)", ("apply_purchase (core/loyalty.py",),
     None),
    ("    records from JSON (Spend/Stamps/Basket.from_json)", (".from_json (core/loyalty.py",),
     None),
    ("    records to JSON (to_json)", (".to_json (core/loyalty.py",), None),
    ("    returns ledger: remember purchases (core.returns.LedgerBatch)",
     ("LedgerBatch.add (core/returns.py", "LedgerBatch.finish (core/returns.py"), None),
    ("    returns ledger records: day records and head (agents.loyalty._write_ledger)",
     ("_write_ledger (agents/loyalty.py",), None),
    ("    table writes + changelog queue (TableWrites.commit)",
     ("TableWrites.commit (tables/batch.py",), None),
    ("    metrics (core.metrics)", ("(core/metrics.py",), None),
    ("  acks (Consumer._ack_offsets)", ("_ack_offsets (app/runtime/transport.py",), None),
    ("bulk changelog sends (app.runtime.bulk.BulkWriter)", ("(app/runtime/bulk.py",), None),
    ("Faust consumer in main loop (drain, conductor, commit)",
     ("(faust/transport/consumer.py", "(faust/transport/conductor.py"), "main loop"),
    ("  offset commits (Consumer.commit)", ("Consumer.commit (faust/",), None),
    ("Faust ProducerBuffer + aiokafka producer (sends, flush)",
     ("(faust/transport/producer.py", "(aiokafka/producer/"), None),
    ("aiokafka fetchers in the main loop (Faust's, inline by default, and the replicas')",
     ("(aiokafka/consumer/",), "main loop"),
    ("Faust consumer thread (fetching; wall: the whole thread)", ("",), "consumer thread"),
    ("aiokafka protocol encode/decode (any thread)", ("(aiokafka/protocol/",
                                                      "(aiokafka/record/"), None),
    ("web server (aiohttp: /metrics polls)", ("(aiohttp/",), None),
    ("logging", ("(logging/",), None),
    ("idle in select/epoll", ("EpollSelector.select (",), None),
)


@dataclass
class Profile:
    """Samples from one py-spy speedscope file: ``(thread, frames root-first, count)``."""

    samples: list[tuple[str, list[str], int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Number of samples."""
        return sum(w for _, _, w in self.samples) or 1

    def threads(self) -> Counter[str]:
        """Weight per thread."""
        out: Counter[str] = Counter()
        for thread, _, weight in self.samples:
            out[thread] += weight
        return out

    def self_time(self, thread: str | None = None) -> Counter[str]:
        """Weight per innermost frame."""
        out: Counter[str] = Counter()
        for name, frames, weight in self.samples:
            if frames and (thread is None or name == thread):
                out[frames[-1]] += weight
        return out

    def total_time(self, thread: str | None = None) -> Counter[str]:
        """Weight per frame anywhere on the stack (counted once per sample)."""
        out: Counter[str] = Counter()
        for name, frames, weight in self.samples:
            if thread is None or name == thread:
                for frame in set(frames):
                    out[frame] += weight
        return out

    def share(self, patterns: tuple[str, ...], thread: str | None = None) -> float:
        """Fraction of all weight (of ``thread``, if given, still over the whole total)
        whose stack matches one of ``patterns`` (see :data:`STAGES`)."""
        hit = 0
        for name, frames, weight in self.samples:
            if thread is not None and name != thread:
                continue
            if any(_matches(frames, p) for p in patterns):
                hit += weight
        return hit / self.total


def _matches(frames: list[str], pattern: str) -> bool:
    if " > " not in pattern:
        return any(pattern in f for f in frames)
    parent, child = pattern.split(" > ", 1)
    if child == "":  # anything called directly by parent that is not one of our own stages
        own = ("(core/", "Mapping.get (", "ManagedUserDict.__setitem__", "(app/deadletters")
        return any(parent in a and not any(o in b for o in own)
                   for a, b in itertools.pairwise(frames))
    return any(parent in a and child in b for a, b in itertools.pairwise(frames))


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def load_speedscope(path: Path) -> Profile:
    """Read a py-spy speedscope file into a :class:`Profile`."""
    data = json.loads(path.read_text())
    # Functions, not lines: a function's samples at different lines add up.
    frames = [f"{f['name']} ({_short(f.get('file') or '?')})" for f in data["shared"]["frames"]]
    profile = Profile()
    for thread in data["profiles"]:
        name = str(thread.get("name", "thread"))
        for stack, weight in zip(thread["samples"], thread["weights"], strict=True):
            del weight  # py-spy weighs every sample 1/rate seconds: count samples instead
            profile.samples.append((name, [frames[i] for i in stack], 1))
    return profile


def _thread_label(frames: list[str]) -> str:
    return "consumer thread" if any("(threading.py" in f for f in frames) else "main loop"


def relabel(profile: Profile) -> Profile:
    """Name threads by role: Faust's consumer thread or the main event loop."""
    return Profile([(_thread_label(frames), frames, w) for _, frames, w in profile.samples])


def record(worker: StoreWorker, out: Path, seconds: int, rate: int,
           mode: str) -> dict[str, Any]:
    """Run py-spy on the worker; returns the purchases rate and CPU during the recording."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    before = sum(worker.events("purchases").values())
    cpu0, t0 = worker.cpu_seconds(), time.monotonic()
    done = subprocess.run([spy, "record", "--pid", str(worker.pid), "--duration", str(seconds),
                           "--rate", str(rate), mode, "--format", "speedscope", "-o", str(out)],
                          capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise BenchError(f"py-spy failed: {done.stderr[-1000:]}")
    elapsed = time.monotonic() - t0
    after = sum(worker.events("purchases").values())
    return {"events_per_s": round((after - before) / elapsed, 1),
            "cpu_percent": round(100 * (worker.cpu_seconds() - cpu0) / elapsed, 1),
            "events": int(after - before)}


#: Frames at the root of every stack (CLI, threads, event loop): left out of "total" lists.
ROOTS = ("(click/", "(<frozen runpy>", "(faust/cli/", "(mode/worker.py", "(faust/__main__.py",
         "(threading.py", "(mode/threads.py", "BaseEventLoop.run_", "BaseEventLoop._run_once (",
         "Handle._run (")


def _top(counter: Counter[str], total: float, n: int, skip_roots: bool = False) -> list[str]:
    """The ``n`` heaviest frames, as shares of ``total``."""
    rows = [(f, w) for f, w in counter.most_common()
            if not (skip_roots and any(r in f for r in ROOTS))][:n]
    return [f"  {100 * w / total:5.1f}%  {frame}" for frame, w in rows]


def summarise(wall: Profile, cpu: Profile, runs: dict[str, Any], header: list[str],
              gil_capacity: int) -> str:
    """The text summary written to ``profile-data.txt`` (``gil_capacity``: samples py-spy
    would take in the GIL recording if some thread always held the GIL)."""
    lines = [*header, "", f"GIL held (by any thread) {100 * cpu.total / gil_capacity:.0f}% "
             "of the GIL recording"]
    lines.append("Wall clock (py-spy --idle), share of all thread samples:")
    for thread, w in wall.threads().most_common():
        idle = sum(v for f, v in wall.self_time(thread).items() if "EpollSelector.select" in f)
        write = sum(v for f, v in wall.self_time(thread).items()
                    if "_SelectorSocketTransport.write" in f)
        lines.append(f"  {thread:16} {100 * w / wall.total:5.1f}% of samples; of its time: "
                     f"{100 * idle / w:4.1f}% idle in epoll, {100 * write / w:4.1f}% inside "
                     "socket write")
    lines += ["", "CPU (py-spy --gil: samples holding the GIL), share by thread:"]
    for thread, w in cpu.threads().most_common():
        lines.append(f"  {thread:16} {100 * w / cpu.total:5.1f}%")
    lines += ["", "Stages: samples whose stack includes the stage (nested stages overlap "
              "their parent). CPU: share of all GIL-held samples; wall: share of the main "
              "loop thread's time (of the consumer thread's for its row):",
              f"  {'':66} {'CPU':>6} {'wall':>6}"]
    threads = wall.threads()
    for label, patterns, only in STAGES:
        thread = only or "main loop"
        in_thread = wall.share(patterns, thread) * wall.total / max(1, threads.get(thread, 0))
        lines.append(f"  {label:66} {100 * cpu.share(patterns, only):5.1f}% "
                     f"{100 * in_thread:5.1f}%")
    lines += ["", "Top 25 functions by self time (CPU, GIL held, all threads):"]
    lines += _top(cpu.self_time(), cpu.total, 25)
    lines += ["", "Top 25 functions by self time (wall clock, main loop thread):"]
    main_total = wall.threads().get("main loop", 1)
    lines += _top(wall.self_time("main loop"), main_total, 25)
    lines += ["", "Top 40 functions by total time (CPU, GIL held, all threads; the CLI, "
              "thread and event-loop roots left out):"]
    lines += _top(cpu.total_time(), cpu.total, 40, skip_roots=True)
    lines += ["", f"Recording runs: {json.dumps(runs)}"]
    return "\n".join(lines) + "\n"


def profile(args: argparse.Namespace, wall_file: Path, cpu_file: Path) -> dict[str, Any]:
    """Start stack and worker, record both profiles; returns the header and rates."""
    tmp = Path(tempfile.mkdtemp(prefix="storestream-profile-"))
    workload = build(args.events, args.customers, args.partitions)
    with DevStack(free_port(), free_port(), startup_timeout=30.0) as stack:
        extra = dict(item.split("=", 1) for item in args.env)
        deployment = StoreDeployment(stack, tmp, "prof", partitions=args.partitions,
                                     extra_env=extra)
        deployment.create_topics()
        asyncio.run(produce_workload(stack.bootstrap, deployment.prefix, workload))
        worker = deployment.start_worker("prof")
        try:
            deadline = time.monotonic() + 120
            while not sum(worker.events("purchases").values()):
                if time.monotonic() > deadline or not worker.alive():
                    raise BenchError(f"worker never processed a purchase:\n{worker.log_tail()}")
                time.sleep(0.2)
            time.sleep(2)  # past the first batch
            before = sum(worker.events("purchases").values())
            cpu0, t0 = worker.cpu_seconds(), time.monotonic()
            time.sleep(5)
            elapsed = time.monotonic() - t0
            runs: dict[str, Any] = {"unprofiled_5s": {
                "events_per_s": round((sum(worker.events("purchases").values()) - before)
                                      / elapsed, 1),
                "cpu_percent": round(100 * (worker.cpu_seconds() - cpu0) / elapsed, 1)}}
            log(f"profile: recording wall clock for {args.seconds} s ...")
            runs["wall"] = record(worker, wall_file, args.seconds, args.rate, "--idle")
            log(f"profile: recording GIL-held samples for {args.seconds} s ...")
            runs["gil"] = record(worker, cpu_file, args.seconds, args.rate, "--gil")
            left = workload.events - sum(worker.events("purchases").values())
            runs["purchases_left_at_end"] = int(left)
        finally:
            worker.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    m = machine_info()
    header = [
        "storestream loyalty path profile (python -m bench.profile_loyalty)",
        f"{m['date']}; {m['cpu_model']}, {m['cores']} cores, Python {m['python']}, "
        f"load {m['loadavg_start']}",
        f"workload: {args.events:,} purchases, {args.customers:,} customers, "
        f"{args.partitions} partitions, pre-produced; one worker, memory://, -l info"
        + (f", {' '.join(args.env)}" if args.env else ""),
        f"py-spy {args.rate} Hz, {args.seconds} s per recording; files: {wall_file.name}, "
        f"{cpu_file.name}",
        f"rates: unprofiled {runs['unprofiled_5s']['events_per_s']} ev/s at "
        f"{runs['unprofiled_5s']['cpu_percent']}% CPU; during wall recording "
        f"{runs['wall']['events_per_s']} ev/s; during GIL recording "
        f"{runs['gil']['events_per_s']} ev/s (py-spy pauses the process to sample)",
    ]
    if runs["purchases_left_at_end"] <= 0:
        header.append("WARNING: the workload ran out during recording; raise --events")
    return {"header": header, "runs": runs, "gil_capacity": args.seconds * args.rate}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_loyalty",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=30, help="length of each recording")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="worker setting, e.g. TIER_WINDOW_DAYS=365 (repeatable)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--summarise-only", action="store_true",
                        help="re-read the last recordings instead of recording")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    wall_file = args.out_dir / "profile-wall.speedscope.json"
    cpu_file = args.out_dir / "profile-cpu.speedscope.json"
    meta_file = args.out_dir / "profile-runs.json"
    if args.summarise_only:
        meta = json.loads(meta_file.read_text())
    else:
        meta = profile(args, wall_file, cpu_file)
        meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    text = summarise(relabel(load_speedscope(wall_file)), relabel(load_speedscope(cpu_file)),
                     meta["runs"], meta["header"], meta["gil_capacity"])
    (args.out_dir / "profile-data.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
