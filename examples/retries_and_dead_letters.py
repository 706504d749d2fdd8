"""Retries with back-off, dead letters and redrive.

A consumer delivers webhooks. A failure is nacked with a delay that doubles at each attempt
(exponential back-off); after ``max_attempts`` failed deliveries a message moves to the
dead-letter queue, with ``x-death-*`` headers saying why. A payload that can never work is
rejected at once. After "fixing the bug", ``redrive()`` puts the dead letters back, under their
original ids and with their attempts reset, and they go through.

Run it: ``python examples/retries_and_dead_letters.py``
"""

from __future__ import annotations

import time

import mqlite

endpoint_fixed = False
calls: dict[str, int] = {}


def deliver(body: dict[str, str]) -> None:
    """Pretend to POST a webhook."""
    url = body["url"]
    calls[url] = calls.get(url, 0) + 1
    if "flaky" in url and calls[url] < 3:
        raise ConnectionError("503 Service Unavailable")
    if "broken" in url and not endpoint_fixed:
        raise RuntimeError("500 Internal Server Error")


def work(webhooks: mqlite.Queue[dict[str, str]], started: float) -> None:
    """Handle messages until the queue is settled (nothing ready, delayed or in flight)."""
    while not webhooks.join(timeout=0):
        try:
            msg = webhooks.get(timeout=1)
        except mqlite.Empty:
            continue
        url, at = msg.body["url"], time.monotonic() - started
        if "payload" not in msg.body:
            msg.reject("invalid payload: no 'payload' field")
            print(f"{at:5.2f}s  #{msg.id} {url}: rejected (poison)")
            continue
        try:
            deliver(msg.body)
        except Exception as error:
            backoff = 0.05 * 2 ** (msg.attempts - 1)  # 0.05 s, 0.1 s, 0.2 s, ...
            msg.nack(delay=backoff, error=f"{type(error).__name__}: {error}")
            last = msg.attempts == webhooks.max_attempts
            then = "dead-lettered" if last else f"retry in {backoff:.2f}s"
            print(f"{at:5.2f}s  #{msg.id} {url}: attempt {msg.attempts} failed ({error}); {then}")
        else:
            msg.ack()
            print(f"{at:5.2f}s  #{msg.id} {url}: delivered on attempt {msg.attempts}")


def main() -> None:
    global endpoint_fixed
    webhooks: mqlite.Queue[dict[str, str]] = mqlite.Queue("webhooks", lease=5.0, max_attempts=3)
    dead: mqlite.Queue[dict[str, str]] = mqlite.Queue(webhooks.dead_letter, storage=webhooks.storage)
    webhooks.put({"url": "https://shop.example/ok", "payload": "order 1"})
    webhooks.put({"url": "https://shop.example/flaky", "payload": "order 2"})
    webhooks.put({"url": "https://shop.example/broken", "payload": "order 3"})
    webhooks.put({"url": "https://shop.example/ok"})  # no payload: poison

    started = time.monotonic()
    work(webhooks, started)
    print(f"after the first run: {webhooks.stats()}")

    for letter in dead.peek(10):
        headers = {k: v for k, v in letter.headers.items() if k.startswith("x-death-")}
        print(f"dead letter #{letter.id} {letter.body['url']}: {headers}")

    # Triage: the poison message can never work, so drop it (ack it in the dead-letter queue);
    # give the others back to the dead-letter queue, then fix the endpoint and redrive them.
    for letter in dead.get_many(10):
        if letter.headers["x-death-reason"] == "rejected":
            letter.ack()
            print(f"dropped poison message #{letter.id}")
        else:
            letter.release()
    endpoint_fixed = True
    print("endpoint fixed; redriving the dead letters ...")
    moved = webhooks.redrive()
    print(f"redrive moved {moved} message(s)")
    work(webhooks, started)
    print(f"after the redrive: {webhooks.stats()}")


if __name__ == "__main__":
    main()
