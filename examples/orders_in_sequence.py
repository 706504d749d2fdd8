"""Order processing with groups: each customer's orders strictly in sequence, many workers.

Every order is put with ``group=<customer>``. mqlite then delivers the orders of one customer
one at a time, in the order they were put, even to several worker threads, while different
customers are processed in parallel. One payment fails once: the customer's next orders wait
until it succeeds on retry, so "pay" never runs before "create" and "ship" never before "pay".

Run it: ``python examples/orders_in_sequence.py``
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import mqlite

STEPS = ["create", "pay", "ship"]

lock = threading.Lock()
history: dict[str, list[str]] = defaultdict(list)  # customer -> steps, in processing order
busy: set[str] = set()  # customers being processed right now
overlaps = 0
failed_once = False


def handle(worker: str, customer: str, step: str) -> None:
    global overlaps, failed_once
    with lock:
        if customer in busy:
            overlaps += 1  # would mean two orders of one customer at once: never happens
        busy.add(customer)
    try:
        time.sleep(random.uniform(0.001, 0.005))
        if customer == "carol" and step == "pay" and not failed_once:
            failed_once = True
            raise RuntimeError("payment gateway timeout")
        with lock:
            history[customer].append(step)
            print(f"{worker}: {customer:<6} {step}", flush=True)
    finally:
        with lock:
            busy.discard(customer)


def worker(name: str, orders: mqlite.Queue[dict[str, str]]) -> None:
    for msg in orders:
        try:
            with msg:
                handle(name, msg.body["customer"], msg.body["step"])
        except RuntimeError as error:
            print(f"{name}: {msg.body['customer']:<6} {msg.body['step']} failed ({error}); will retry", flush=True)


def main() -> None:
    random.seed(3)
    orders: mqlite.Queue[dict[str, str]] = mqlite.Queue("orders", lease=5.0)
    customers = ["alice", "bob", "carol", "dave"]
    for step in STEPS:  # interleaved, as they would arrive
        for customer in customers:
            orders.put({"customer": customer, "step": step}, group=customer)

    workers = [threading.Thread(target=worker, args=(f"worker-{i}", orders)) for i in range(4)]
    for thread in workers:
        thread.start()
    orders.join(timeout=4)
    orders.close()
    for thread in workers:
        thread.join()

    for customer in customers:
        print(f"{customer}: {' -> '.join(history[customer])}")
    in_sequence = all(history[c] == STEPS for c in customers)
    print(f"every customer in sequence: {in_sequence}; overlapping orders of one customer: {overlaps}")


if __name__ == "__main__":
    main()
