"""Where a restarted worker's changelog restore spends its time: py-spy on a real worker.

``python -m bench.profile_restore [--customers N] [--store memory://] [--broker kafka]``
starts a broker, fills the ``spend``, ``stamps`` and ``baskets`` changelogs with N customers
(:func:`bench.recovery.customer_records`), starts ``faust -A app worker`` under ``py-spy record
--gil`` and stops the recording once ``/health`` answers 200 (restore done). Prints the
restore time and the heaviest functions (self and total), and writes the speedscope file to
``bench/results/profile-restore.speedscope.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.dev.devstack import TopicSpec
from bench.deploy import StoreDeployment, add_broker_argument, bench_stack
from bench.profile_loyalty import _top, load_speedscope
from bench.recovery import customer_records
from bench.run import RESULTS
from bench.workload import COMPACT_TOPIC_CONFIG, create_topics, log, produce


def main(argv: list[str] | None = None) -> int:
    """Profile one restore."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_restore", description=__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--no-profile", action="store_true", help="time the restore only")
    add_broker_argument(parser, default="kafka")
    args = parser.parse_args(argv)
    out = RESULTS / "profile-restore.speedscope.json"
    with tempfile.TemporaryDirectory(prefix="restore-prof-") as tmpdir, \
            bench_stack(args.broker) as stack:
        tmp = Path(tmpdir)
        deployment = StoreDeployment(stack, tmp, "prof-restore", partitions=8,
                                     extra_env={"APP_STORE": args.store})
        deployment.create_topics()
        app_id = deployment.env["APP_ID"]
        asyncio.run(create_topics(stack.bootstrap, [
            TopicSpec(f"{app_id}-{table}-changelog", 8, COMPACT_TOPIC_CONFIG)
            for table in ("spend", "stamps", "baskets")]))
        records = customer_records(args.customers)
        for table, rows in records.items():
            asyncio.run(produce(stack.bootstrap, f"{app_id}-{table}-changelog", rows))
        total = sum(len(rows) for rows in records.values())
        log(f"profile_restore: {total:,} changelog records for {args.customers:,} customers")
        worker = deployment.start_worker("restore")
        spy = None
        if not args.no_profile:
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen([exe, "record", "--pid", str(worker.pid), "--rate",
                                    str(args.rate), "--gil", "--format", "speedscope",
                                    "-o", str(out)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        try:
            ready_s = worker.wait_ready(900)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=120)
            worker.stop()
        print(f"restore of {total:,} records ({args.customers:,} customers, {args.store}): "
              f"process start -> /health 200 in {ready_s:.2f} s "
              f"({total / ready_s:,.0f} records/s)")
        log_text = (tmp / f"{deployment.prefix}restore.log").read_text(errors="replace")
        for line in log_text.splitlines():
            if "Restore complete" in line or "Worker ready" in line or "Recovery" in line[:200]:
                print("  log:", line[:200])
        if spy is not None and out.exists():
            time.sleep(0.1)
            profile = load_speedscope(out)
            print(f"\nGIL samples: {profile.total}")
            print("self:")
            print("\n".join(_top(profile.self_time(), profile.total, 25)))
            print("total:")
            print("\n".join(_top(profile.total_time(), profile.total, 45, skip_roots=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
