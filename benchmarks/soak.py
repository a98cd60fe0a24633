"""Soak: a real `bentoml serve` held at ~80 % of its measured capacity; nothing lost or leaking.

One run, one server (the service's defaults, a private job store):

1. **capacity**: closed-loop users (1, 2, 4, 8 by default; no think time) run the soak's mix
   (``soak_mix.py``: PNG and DICOM ``/segment``, ``/segment/boxes``, ``/segment/dicom-seg``,
   ``/jobs`` series) for ``--ramp-seconds`` each; the capacity is the best successful
   operations/s of a level;
2. **soak**: ``--fraction`` (0.8) of it as an open-loop constant arrival rate for ``--seconds``
   (600): an operation starts every 1/rate s whether or not the earlier ones were answered.

Every request sent and every answer received is counted (``ledger.py``, by status), every client
request has a timeout (``--timeout``, shorter than the run) so one never answered is counted, not
waited for; the resident memory of every server process is sampled every ``--sample-s`` s.
Verdicts (``soak_report.py``): every request answered and 0 failures; RSS of every process grows
< 10 % from the end of the warm-up (``--warmup``) to the end; p99 of the last window (``--window``
s) within 20 % of the first after the warm-up. Writes results/soak.md, soak.csv (per window) and
soak_memory.csv; exits 1 when a verdict fails.

    python -m benchmarks.soak [--seconds 600] [--warmup 120] [--ramp-users 1 2 4 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from benchmarks.common import RESULTS, provenance
from benchmarks.ledger import Ledger
from benchmarks.load import throughput
from benchmarks.memory import MemorySampler, serve_process
from benchmarks.soak_mix import Mix
from benchmarks.soak_report import write_report
from benchmarks.soak_run import Run
from service.launcher import running_server

POOL = 256  # open-loop operations in flight at most (far above what 80 % of capacity needs)


def closed_loop(mix: Mix, users: int, seconds: float, ledger: Ledger) -> dict:
    """``users`` closed-loop users for ``seconds``: one row of the ramp."""
    start = time.time()
    stop = time.monotonic() + seconds
    ends: list[float] = []

    def user(k: int) -> None:
        names = mix.sequence(seed=1000 * users + k)
        while time.monotonic() < stop:
            if mix.run(next(names)):
                ends.append(time.time())

    threads = [threading.Thread(target=user, args=(k,), daemon=True) for k in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + mix.longest_s + 10)
    tally = ledger.tally(since=start)
    row = {"users": users, "seconds": seconds, "operations_ok": len(ends)}
    row |= {"requests": tally.sent, "failed": tally.failed}
    row["ok_ops_per_s"] = throughput(ends, start, seconds)
    print(f"capacity: {row}", flush=True)
    return row


def open_loop(mix: Mix, run: Run) -> None:
    """Operations at ``run.rate`` per second for ``run.args.seconds``, then wait for the last
    ones (at most the longest an operation can take); those still running stay open."""
    names = mix.sequence(seed=0)
    lock = threading.Lock()

    def operation(name: str, due: float) -> None:
        with lock:
            run.started += 1
            run.max_late_s = max(run.max_late_s, time.monotonic() - due)
        mix.run(name)
        with lock:
            run.finished += 1

    pool = ThreadPoolExecutor(POOL, thread_name_prefix="soak")
    futures = []
    begin = time.monotonic()
    run.start = time.time()
    while (due := begin + run.scheduled / run.rate) < begin + run.args.seconds:
        time.sleep(max(0.0, due - time.monotonic()))
        futures.append(pool.submit(operation, next(names), due))
        run.scheduled += 1
    wait(futures, timeout=mix.longest_s + 10)
    pool.shutdown(wait=False, cancel_futures=True)


def soak(args: argparse.Namespace, work: Path) -> Run:
    """Start the server, measure its capacity, soak it: the :class:`Run`."""
    run = Run(args)
    env = {"LESIONSEG_JOBS_DIR": str(work / "jobs")}
    with running_server(env, work / "serve.log", timeout=600) as url:
        sampler = MemorySampler(serve_process(int(url.rsplit(":", 1)[1])), args.sample_s).start()
        mix = Mix(url, run.ledger, args.timeout, args.job_timeout)
        try:
            for users in args.ramp_users:
                run.ramp.append(closed_loop(mix, users, args.ramp_seconds, run.ledger))
            run.capacity = max(row["ok_ops_per_s"] for row in run.ramp)
            run.rate = args.fraction * run.capacity
            if run.rate <= 0:
                raise RuntimeError(
                    f"no operation succeeded while measuring the capacity: {run.ramp}"
                )
            print(f"soak: {run.rate:.2f} operations/s for {args.seconds} s", flush=True)
            open_loop(mix, run)
        finally:
            sampler.stop()
            mix.close()
            run.memory, run.memory_error = sampler.samples, sampler.error
    return run


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="soak duration")
    parser.add_argument(
        "--warmup",
        type=float,
        default=120,
        help="seconds of the soak before the memory and latency baselines",
    )
    parser.add_argument("--window", type=float, default=60, help="seconds per latency window")
    parser.add_argument("--ramp-users", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--ramp-seconds", type=float, default=20, help="per ramp level")
    parser.add_argument("--fraction", type=float, default=0.8, help="of the capacity, soaked")
    parser.add_argument("--timeout", type=float, default=30, help="client timeout per request")
    parser.add_argument("--job-timeout", type=float, default=120, help="a job must be done within")
    parser.add_argument("--sample-s", type=float, default=2.0, help="RSS sampling period")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak")
    args = parser.parse_args(argv)
    if not 0 < args.warmup < args.seconds:
        parser.error("--warmup must be within the soak (0 < warmup < seconds)")
    if args.timeout >= args.seconds:
        parser.error("--timeout must be shorter than the soak, so a lost request is counted")
    return args


def soak_and_report(args: argparse.Namespace) -> tuple[Run, list[dict]]:
    """The whole soak of ``args``, its report written: the run and its verdicts."""
    base = provenance() | {"cpu_available": len(os.sched_getaffinity(0))}
    base["inherited_env"] = " ".join(
        f"{k}={v}" for k, v in os.environ.items() if k.startswith("LESIONSEG_")
    )
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lesionseg-soak-") as tmp:
        run = soak(args, Path(tmp))
    base["run_s"] = round(time.monotonic() - began)
    verdicts = write_report(run, base, args.out)
    print(f"soak report: {args.out.with_suffix('.md')}", flush=True)
    return run, verdicts


def main(argv: list[str] | None = None) -> int:
    _, verdicts = soak_and_report(parse(argv))
    failed = [v["verdict"] for v in verdicts if v["passed"] is False]
    if failed:
        print(f"soak FAILED: {'; '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
