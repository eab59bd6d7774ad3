"""Per-process CPU time and memory, read from ``/proc`` (Linux) or the process's own rusage."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read()
    fields = raw[raw.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def host_cpu_ticks() -> tuple[int, int]:
    """``(steal, total)`` CPU ticks of the whole machine so far (``/proc/stat``): steal is
    time a virtual machine's CPUs were ready but the hypervisor ran something else."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of CPU time stolen by the hypervisor between two :func:`host_cpu_ticks`."""
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total > 0 else 0.0


def memory_mb(pid: int) -> tuple[float, float]:
    """``(current RSS, peak RSS)`` of process ``pid`` in MB (VmRSS, VmHWM)."""
    rss = peak = 0.0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return rss, peak


def self_cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread, native ones included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def self_peak_rss_mb() -> float:
    """Peak RSS of this process in MB: VmHWM, not ``ru_maxrss`` (which survives ``exec``, so
    a child would report its parent's peak when that was higher)."""
    return memory_mb(os.getpid())[1]


@dataclass
class Window:
    """A measured processing window of some process: wall time, CPU time, events."""

    wall_start: float = 0.0
    wall_end: float = 0.0
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    events: int = 0

    @property
    def seconds(self) -> float:
        """Wall-clock length of the window."""
        return max(1e-9, self.wall_end - self.wall_start)

    @property
    def rate(self) -> float:
        """Events per second over the window."""
        return self.events / self.seconds

    @property
    def cpu_percent(self) -> float:
        """CPU use over the window in percent of one core."""
        return 100.0 * (self.cpu_end - self.cpu_start) / self.seconds

    @property
    def cpu_us_per_event(self) -> float:
        """CPU microseconds spent per event (less sensitive to machine load than the rate)."""
        return 1e6 * (self.cpu_end - self.cpu_start) / max(1, self.events)


def now() -> float:
    """Wall clock used for every window (comparable across processes)."""
    return time.time()


#: Prefix of the one line a peer process prints on stdout with its own measurements.
RESULT_PREFIX = "BENCH_RESULT "


def emit_result(window: Window, **extra: object) -> None:
    """Print a peer's measurements as one ``BENCH_RESULT {json}`` line on stdout."""
    import json

    payload = {
        "first_ts": window.wall_start, "last_ts": window.wall_end,
        "cpu_start": window.cpu_start, "cpu_end": window.cpu_end, "events": window.events,
        "peak_rss_mb_self": self_peak_rss_mb(), **extra,
    }
    print(RESULT_PREFIX + json.dumps(payload), flush=True)
