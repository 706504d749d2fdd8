"""Nothing lost when the process dies: the file log after a SIGKILL.

A child process queues five invoices in a ``FileStorage`` directory (with the default
``durability="full"``, each put is on disk before it returns), pays the first one (acked), starts
on the second and is killed with SIGKILL before it can ack. The parent then opens the same
directory: the paid invoice is gone for good, the other four are all there, and the one that was
in flight when the child died is delivered again, its attempts counting the delivery that died.

Run it: ``python examples/survive_a_crash.py``
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile

import mqlite


def doomed_child(directory: str) -> None:
    """Queue invoices, pay one, and die in the middle of the next."""
    invoices: mqlite.Queue[dict[str, int]] = mqlite.Queue("invoices", storage=mqlite.FileStorage(directory))
    invoices.put_many([{"invoice": number, "cents": 1000 * number} for number in range(1, 6)])
    paid = invoices.get()
    paid.ack()
    print(f"child: paid invoice {paid.body['invoice']}", flush=True)
    working = invoices.get()
    print(f"child: charging invoice {working.body['invoice']} ... and the process is killed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush, no goodbye


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        child = multiprocessing.get_context("spawn").Process(target=doomed_child, args=(directory,))
        child.start()
        child.join(timeout=20)
        print(f"child exit code: {child.exitcode} (killed by signal {-(child.exitcode or 0)})")

        storage = mqlite.FileStorage(directory)  # replays the log; the dead child's lock is gone
        invoices: mqlite.Queue[dict[str, int]] = mqlite.Queue("invoices", storage=storage)
        print(f"after the restart: {invoices.qsize()} invoices waiting")
        charged = []
        while not invoices.empty():
            with invoices.get() as msg:
                charged.append(msg.body["invoice"])
                print(f"parent: charged invoice {msg.body['invoice']} (attempt {msg.attempts})")
        print(f"every unpaid invoice charged, the paid one not again: {charged == [2, 3, 4, 5]}")
        invoices.close()
        storage.close()


if __name__ == "__main__":
    main()
