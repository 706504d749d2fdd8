"""The FileStorage workloads of ``python -m mqlite bench`` (W5f, W6f, W7f, W8f of issue 4).

Every run works in a fresh temporary directory (``$MQLITE_BENCH_DIR`` or the system's temp
directory; put it on the disk you care about) that is deleted afterwards. mqlite queues use the
RAW serializer (the bench's 64-byte ``bytes`` bodies as they are). Peers run with the settings
their source hard-codes, stated in each label:

* persist-queue file ``Queue(autosave=True)`` (1.1): each ``put`` pickles the item, writes and
  flushes it to the current chunk file and rewrites its ``info`` file (temp file + rename, never
  fsynced); the chunk file is fsynced only when it fills, once per ``chunksize`` = 100 puts.
  ``get`` rewrites ``info`` again. A killed process loses nothing; a power loss can lose up to
  the last 99 puts and any recent change of its ``info`` file.
* queuelib ``FifoDiskQueue`` (1.10): ``push`` is one ``os.write``, ``pop`` one ``os.read``; it
  never fsyncs and writes its ``info.json`` (where the queue's head and tail are) only at
  ``close``, so a killed process loses every message.

mqlite's ``durability="full"`` syncs every put and ack (``fdatasync``) before returning, so two
syncs per message is its floor: the "machine limit" rows time raw ``os.write`` +
``os.fdatasync`` on the same disk, appending to a file and writing over pre-zeroed blocks
(which is what FileStorage's preallocation gives its records).
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import tempfile
import threading
import time

from .._queue import Queue
from ..serializers import RAW
from ._sqlite_bench import Result, Runner, _directory, bodies, clean, verify
from .file import Durability, FileStorage

__all__ = [
    "W6_BATCH",
    "W6_MESSAGES",
    "W7_PRODUCERS",
    "w5_machine_limit",
    "w5_mqlite",
    "w5_persist_queue",
    "w5_queuelib",
    "w6_mqlite",
    "w6_raw_append",
    "w7_mqlite",
    "w8_raw_read",
    "w8_reopen",
]

W6_MESSAGES = 10_000
W6_BATCH = 100  # get_many size of the W6f drain
W7_PRODUCERS = 8
QUEUE = "bench"


def _queue(directory: str, durability: Durability) -> Queue[bytes]:
    storage = FileStorage(os.path.join(directory, "log"), durability=durability)
    return Queue(QUEUE, storage, serializer=RAW, lease=300.0)


def _close(q: Queue[bytes]) -> None:
    q.close()
    q.storage.close()


def _drain(q: Queue[bytes], n: int, batch: int = 1000) -> list[bytes]:
    """Receive and ack everything left in ``q`` (untimed; for checking what a run stored)."""
    got: list[bytes] = []
    while len(got) < n:
        messages = q.get_many(batch, timeout=0)
        if not messages:
            break
        got.extend(m.body for m in messages)
        q.ack_many(messages)
    return got


# -- W5f: one message at a time ----------------------------------------------------------------


def w5_machine_limit(prezeroed: bool) -> Runner:
    """Two synced writes per message (the put and the ack): raw ``os.write`` + ``os.fdatasync``
    of a 64-byte record, 2n times, so n / elapsed is the rate / 2. Appending grows the file at
    every write, so each sync also journals its new size and blocks; ``prezeroed`` first writes
    and syncs zeros over the whole range, as FileStorage's preallocation does, so each sync has
    only data to write."""

    def run(n: int) -> Result:
        record = bytes(64)
        with _directory() as directory:
            fd = os.open(os.path.join(directory, "raw"), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                if prezeroed:
                    os.write(fd, bytes(2 * n * len(record)))
                    os.fdatasync(fd)
                    os.lseek(fd, 0, os.SEEK_SET)
                began = time.perf_counter()
                for _ in range(2 * n):
                    os.write(fd, record)
                    os.fdatasync(fd)
                elapsed = time.perf_counter() - began
            finally:
                os.close(fd)
        return elapsed, clean()

    return run


def w5_mqlite(durability: Durability) -> Runner:
    """put, get, ack one message at a time through ``Queue`` on a FileStorage."""

    def run(n: int) -> Result:
        sent = bodies(0, n)
        got: list[bytes] = []
        with _directory() as directory:
            q = _queue(directory, durability)
            try:
                put, get, append = q.put, q.get, got.append
                began = time.perf_counter()
                for body in sent:
                    put(body)
                    msg = get()
                    append(msg.body)
                    msg.ack()
                elapsed = time.perf_counter() - began
                left = q.qsize()
            finally:
                _close(q)
        check = verify([sent], [got])
        if left:
            check.error = f"{left} messages still queued after their ack"
        return elapsed, check

    return run


def w5_persist_queue(n: int) -> Result:
    persistqueue = importlib.import_module("persistqueue")

    sent = bodies(0, n)
    got: list[bytes] = []
    with _directory() as directory:
        # tempdir: its info file is written there and renamed into place (same file system)
        q = persistqueue.Queue(os.path.join(directory, "pq"), autosave=True, tempdir=directory)
        began = time.perf_counter()
        for body in sent:
            q.put(body)
            got.append(q.get())
            q.task_done()
        elapsed = time.perf_counter() - began
        for handle in (q.headf, q.tailf):
            handle.close()
    return elapsed, verify([sent], [got])


def w5_queuelib(n: int) -> Result:
    queuelib = importlib.import_module("queuelib")

    sent = bodies(0, n)
    got: list[bytes] = []
    with _directory() as directory:
        q = queuelib.FifoDiskQueue(os.path.join(directory, "ql"))
        began = time.perf_counter()
        for body in sent:
            q.push(body)
            got.append(q.pop())
        elapsed = time.perf_counter() - began
        q.close()
    return elapsed, verify([sent], [got])


# -- W6f: a batch of 10,000 ----------------------------------------------------------------------


def w6_raw_append(n: int) -> Result:
    """The same bytes appended with one ``os.write`` and one ``os.fdatasync``, read back."""
    sent = bodies(0, n)
    with _directory() as directory:
        path = os.path.join(directory, "raw")
        began = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, b"".join(sent))
            os.fdatasync(fd)
        finally:
            os.close(fd)
        elapsed = time.perf_counter() - began
        with open(path, "rb") as file:
            data = file.read()
    size = len(sent[0]) if sent else 1
    got = [data[i : i + size] for i in range(0, len(data), size)]
    return elapsed, verify([sent], [got])


def w6_mqlite(durability: Durability, batch: int, drain: bool = True) -> Runner:
    """``put_many`` of all n bodies in one call, then (if ``drain``) ``get_many(batch)`` +
    ``ack_many`` until empty; without ``drain`` only the put is timed (the rest is checked)."""

    def run(n: int) -> Result:
        sent = bodies(0, n)
        with _directory() as directory:
            q = _queue(directory, durability)
            try:
                began = time.perf_counter()
                q.put_many(sent)
                got: list[bytes] = []
                if drain:
                    while len(got) < n:
                        messages = q.get_many(batch, timeout=0)
                        if not messages:
                            break
                        got.extend(m.body for m in messages)
                        q.ack_many(messages)
                elapsed = time.perf_counter() - began
                if not drain:
                    got = _drain(q, n)
                left = q.qsize()
            finally:
                _close(q)
        check = verify([sent], [got])
        if left:
            check.error = f"{left} messages still queued after the drain"
        return elapsed, check

    return run


# -- W7f: many producer threads, group commit ----------------------------------------------------


def w7_mqlite(producers: int, durability: Durability = "full") -> Runner:
    """``producers`` threads each put n / producers messages one at a time (timed from a common
    start until the last put returned); then the queue is drained and checked (untimed)."""

    def run(n: int) -> Result:
        per = n // producers
        sent = [bodies(p, per) for p in range(producers)]
        errors: list[BaseException] = []
        start = threading.Barrier(producers + 1)
        with _directory() as directory:
            q = _queue(directory, durability)
            try:

                def produce(mine: list[bytes]) -> None:
                    try:
                        put = q.put
                        start.wait()
                        for body in mine:
                            put(body)
                    except BaseException as error:
                        errors.append(error)

                threads = [threading.Thread(target=produce, args=(s,)) for s in sent]
                for thread in threads:
                    thread.start()
                start.wait()
                began = time.perf_counter()
                for thread in threads:
                    thread.join()
                elapsed = time.perf_counter() - began
                got = _drain(q, per * producers)
            finally:
                _close(q)
        check = verify(sent, [got])
        if errors:
            check.error = f"{type(errors[0]).__name__}: {errors[0]}"
        return elapsed, check

    return run


# -- W8f: reopening a large log ------------------------------------------------------------------

_FILL_BATCH = 10_000
_templates: dict[tuple[int, bool], str] = {}


def _fill(path: str, sent: list[bytes]) -> None:
    """Store ``sent`` through a Queue (normal durability: the fill is not what is measured)."""
    q: Queue[bytes] = Queue(QUEUE, FileStorage(path, durability="normal"), serializer=RAW, lease=300.0)
    try:
        for i in range(0, len(sent), _FILL_BATCH):
            q.put_many(sent[i : i + _FILL_BATCH])
    finally:
        _close(q)


def _template(n: int, compact: bool) -> str:
    """A closed log of n live messages (bodies ``bodies(0, n)``), made once per process and
    copied for each run (filling 1M messages takes longer than the reopen measured); removed
    when the process exits. With ``compact``: a copy of the log, opened and compacted, so it
    starts with a snapshot of them."""
    key = (n, compact)
    path = _templates.get(key)
    if path is None or not os.path.isdir(path):
        if not _templates:
            atexit.register(_remove_templates)
        parent = tempfile.mkdtemp(prefix="mqlite-bench-", dir=os.environ.get("MQLITE_BENCH_DIR"))
        path = os.path.join(parent, "log")
        _templates[key] = path
        if compact:
            shutil.copytree(_template(n, False), path)
            storage = FileStorage(path, durability="normal")
            try:
                storage.compact()
            finally:
                storage.close()
        else:
            _fill(path, bodies(0, n))
    return path


def _remove_templates() -> None:
    for path in _templates.values():
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    _templates.clear()


def w8_reopen(compact: bool) -> Runner:
    """Time ``FileStorage(path)`` on a copy of a closed log of n live messages: replaying the
    log of n puts, or (``compact``) loading the snapshot ``compact()`` wrote. The copy was just
    written, so it is read from the page cache. Checked afterwards (untimed) by peeking every
    message."""

    def run(n: int) -> Result:
        sent = bodies(0, n)
        template = _template(n, compact)
        with _directory() as directory:
            path = os.path.join(directory, "log")
            shutil.copytree(template, path)
            began = time.perf_counter()
            storage = FileStorage(path)
            elapsed = time.perf_counter() - began
            try:
                got = [m.body for m in storage.peek(QUEUE, n + 1, time.time())]
            finally:
                storage.close()
        if got == sent:  # the common case, checked in one pass; else count what went wrong
            check = clean()
            check.received = n
            return elapsed, check
        return elapsed, verify([sent], [[b if isinstance(b, bytes) else b"?" for b in got]])

    return run


def w8_raw_read(n: int) -> Result:
    """Reading every byte of the same n-message log with plain ``read`` (from the page cache,
    like the reopens): the floor under any replay."""
    template = _template(n, False)
    names = sorted(os.listdir(template))
    began = time.perf_counter()
    size = 0
    for name in names:
        with open(os.path.join(template, name), "rb") as file:
            size += len(file.read())
    elapsed = time.perf_counter() - began
    check = clean()
    if not size:
        check.error = "the log is empty"
    return elapsed, check
