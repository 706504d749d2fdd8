"""A pool of worker threads sending "emails" from one queue.

Each worker handles a message inside ``with msg:``: the message is acked when the block ends
normally and nacked (retried later) when it raises. One address fails once, so you can see a
retry; a bounced address fails every time and ends up in the dead-letter queue.

Run it: ``python examples/email_workers.py``
"""

from __future__ import annotations

import threading
import time

import mqlite

failed_once: set[str] = set()
print_lock = threading.Lock()


def say(text: str) -> None:
    with print_lock:
        print(text, flush=True)


def send_email(to: str, subject: str) -> None:
    """Pretend to talk to an SMTP server."""
    time.sleep(0.01)
    if to.startswith("flaky") and to not in failed_once:
        failed_once.add(to)
        raise ConnectionError(f"SMTP server did not answer for {to}")
    if to.startswith("bounce"):
        raise ValueError(f"mailbox {to} does not exist")


def worker(name: str, emails: mqlite.Queue[dict[str, str]]) -> None:
    for msg in emails:  # blocks for each message; ends when the queue is closed
        try:
            with msg:  # ack on success, nack (retry) on an exception
                send_email(**msg.body)
                say(f"{name}: sent {msg.body['subject']!r} to {msg.body['to']} (attempt {msg.attempts})")
        except Exception as error:
            say(f"{name}: attempt {msg.attempts} for {msg.body['to']} failed: {error}")


def main() -> None:
    emails: mqlite.Queue[dict[str, str]] = mqlite.Queue("emails", lease=5.0, max_attempts=3)
    addresses = ["ada@example.com", "flaky@example.com", "grace@example.com", "bounce@example.com"]
    addresses += [f"user{i}@example.com" for i in range(6)]
    for to in addresses:
        emails.put({"to": to, "subject": "Welcome aboard"})
    print(f"queued {emails.qsize()} emails")

    workers = [threading.Thread(target=worker, args=(f"worker-{i}", emails)) for i in range(3)]
    for thread in workers:
        thread.start()
    emails.join(timeout=4)  # until every email is sent or dead-lettered
    stats = emails.stats()

    dead = mqlite.Queue("emails.dead", storage=emails.storage)
    for letter in dead.peek(10):
        print(
            f"dead letter: {letter.body['to']} after {letter.headers['x-death-attempts']} attempts: "
            f"{letter.headers['x-death-detail']}"
        )
    emails.close()  # wakes the workers, whose loops end
    for thread in workers:
        thread.join()
    print(f"done: {len(addresses) - stats.dead} sent, {stats.dead} dead-lettered")


if __name__ == "__main__":
    main()
