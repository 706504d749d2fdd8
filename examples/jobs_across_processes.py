"""Batch jobs spread over worker processes through one SQLite file.

The parent queues a dozen report jobs in a SQLite database and starts three worker processes.
Each worker opens the same file with a ``Queue`` of its own: a job is leased to exactly one
worker at a time, and one whose worker raises is retried, by whichever worker gets it next.
Workers hand their results to the parent on a second queue in the same file. The parent waits
(``join``, which sees the other processes' acks) until every job is settled, then queues one
``stop`` message per worker.

Run it: ``python examples/jobs_across_processes.py``
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time

import mqlite

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
STOP = {"stop": "now"}


def build_report(month: str, attempt: int) -> str:
    """Pretend to crunch a month of numbers; March's data source times out on the first try."""
    time.sleep(0.02)
    if month == "Mar" and attempt == 1:
        raise TimeoutError("the warehouse did not answer")
    return f"report-{month}.pdf"


def worker(url: str, name: str) -> None:
    """Build reports until a stop message arrives; every process opens the storage itself."""
    jobs: mqlite.Queue[dict[str, str]] = mqlite.Queue("reports", storage=url, lease=10.0)
    done: mqlite.Queue[dict[str, str]] = mqlite.Queue("reports.done", storage=jobs.storage)
    try:
        while True:
            msg = jobs.get()
            if msg.body == STOP:
                msg.ack()
                return
            month = msg.body["month"]
            try:
                report = build_report(month, msg.attempts)
            except TimeoutError as error:
                print(f"{name}: {month} failed on attempt {msg.attempts} ({error}); back in the queue", flush=True)
                msg.nack(error=str(error))
                continue
            done.put({"month": month, "report": report, "by": name})
            msg.ack()  # after the result is stored: a crash in between means a retry, not a loss
    finally:
        jobs.close()  # closes the storage too: the queue made it from the URL


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = "sqlite:///" + os.path.join(directory, "jobs.db")  # an absolute path: four slashes
        jobs: mqlite.Queue[dict[str, str]] = mqlite.Queue("reports", storage=url)
        done: mqlite.Queue[dict[str, str]] = mqlite.Queue("reports.done", storage=jobs.storage)
        jobs.put_many([{"month": month} for month in MONTHS])
        print(f"queued {jobs.qsize()} report jobs in {os.path.basename(url)}")

        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per worker, as on macOS
        workers = [spawn.Process(target=worker, args=(url, f"worker-{i}")) for i in range(3)]
        for process in workers:
            process.start()
        jobs.join(timeout=20)  # until every job is acked by some worker (or dead-lettered)
        jobs.put_many([STOP] * len(workers))
        for process in workers:
            process.join(timeout=20)

        results = []
        for msg in done.get_many(100, timeout=0):
            results.append(msg.body)
            msg.ack()
        for result in sorted(results, key=lambda r: MONTHS.index(r["month"])):
            print(f"{result['month']}: {result['report']} (built by {result['by']})")
        built = sorted(r["month"] for r in results)
        print(f"workers exited cleanly: {all(p.exitcode == 0 for p in workers)}")
        print(f"{len(results)} reports, each month exactly once: {built == sorted(MONTHS)}")
        jobs.close()


if __name__ == "__main__":
    main()
