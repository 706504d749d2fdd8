"""Bad input is refused with the right error, a message naming the argument, and no change.

Every case checks three things: the exception type (``ValueError``/``TypeError`` for bad
arguments, ``SerializationError`` for bodies, ``QueueClosed`` after close), that the message
names the argument or the thing that was wrong, and that the queue is exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

import mqlite
from mqlite import QueueClosed, SerializationError
from mqlite.serializers import JSON, RAW
from mqlite.storage import Envelope, QueueSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Snapshot = tuple[Any, ...]


def snapshot(q: mqlite.Queue[Any]) -> Snapshot:
    """Everything observable about ``q`` without changing it."""
    dead = mqlite.Queue(q.dead_letter, storage=q.storage, clock=q._clock, max_attempts=None)
    return (
        q.qsize(),
        q.stats(),
        [(m.id, m.body, m.attempts, m.lease_expires_at, dict(m.headers)) for m in q.peek(100)],
        dead.stats(),
    )


def refused(
    q: mqlite.Queue[Any], error: type[BaseException], words: str | tuple[str, ...], call: Callable[[], object]
) -> BaseException:
    """Assert ``call`` raises ``error`` mentioning every word and leaves ``q`` unchanged."""
    before = snapshot(q)
    with pytest.raises(error) as caught:
        call()
    for word in (words,) if isinstance(words, str) else words:
        assert word in str(caught.value), f"{word!r} not named in {caught.value!r}"
    assert snapshot(q) == before
    return caught.value


@pytest.fixture
def q() -> mqlite.Queue[Any]:
    queue: mqlite.Queue[Any] = mqlite.Queue("jobs", clock=FakeClock(), maxsize=10)
    queue.put("ready")
    queue.put("later", delay=60)
    queue.put("held")
    queue.get()  # "ready" in flight
    return queue


# -- queue names --------------------------------------------------------------------------------

BAD_NAMES: list[tuple[object, type[Exception]]] = [
    ("", ValueError),
    ("/", ValueError),
    ("a/b", ValueError),
    ("a\\b", ValueError),
    ("..", ValueError),
    ("a..b", ValueError),
    ("a\x00b", ValueError),
    ("x" * 201, ValueError),
    (".hidden", ValueError),
    ("a b", ValueError),
    (" ", ValueError),
    ("tab\t", ValueError),
    ("new\nline", ValueError),
    (5, TypeError),
    (None, TypeError),
    (b"jobs", TypeError),
]


@pytest.mark.parametrize(("name", "error"), BAD_NAMES, ids=[repr(n)[:12] for n, _ in BAD_NAMES])
def test_invalid_queue_names_are_refused(name: object, error: type[Exception]) -> None:
    storage = mqlite.MemoryStorage()
    with pytest.raises(error, match="queue name"):
        mqlite.Queue(name, storage=storage)  # type: ignore[arg-type]
    assert storage._index.queues == {}  # nothing was declared


@pytest.mark.parametrize(("name", "error"), BAD_NAMES[:12], ids=[repr(n)[:12] for n, _ in BAD_NAMES[:12]])
def test_invalid_dead_letter_names_are_refused(name: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="dead_letter"):
        mqlite.Queue("jobs", dead_letter=name)  # type: ignore[arg-type]


def test_longest_valid_name_and_dots_inside_are_accepted() -> None:
    assert mqlite.Queue("x" * 195).dead_letter == "x" * 195 + ".dead"  # the longest with the default
    assert mqlite.Queue("x" * 200, dead_letter="x.dead").name == "x" * 200
    assert mqlite.Queue("billing.v2-émails_1").name == "billing.v2-émails_1"


def test_a_name_whose_default_dead_letter_queue_would_be_too_long_is_refused() -> None:
    storage = mqlite.MemoryStorage()
    with pytest.raises(ValueError, match=r"dead-letter queue \(name \+ '\.dead'\) would pass the limit of 200"):
        mqlite.Queue("x" * 196, storage=storage)
    assert storage._index.queues == {}  # nothing was declared


def test_dead_letter_equal_to_the_queue_is_refused() -> None:
    with pytest.raises(ValueError, match="dead_letter"):
        mqlite.Queue("jobs", dead_letter="jobs")


# -- numbers of seconds -------------------------------------------------------------------------

BAD_SECONDS: list[tuple[object, type[Exception]]] = [
    (-1, ValueError),
    (-0.001, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    (-math.inf, ValueError),
    ("1", TypeError),
    (None, TypeError),
    (True, TypeError),
]
SECONDS_IDS = [repr(v) for v, _ in BAD_SECONDS]
BAD_TIMEOUTS = [(v, e) for v, e in BAD_SECONDS if v is not None]  # None means "wait forever"
TIMEOUT_IDS = [repr(v) for v, _ in BAD_TIMEOUTS]


@pytest.mark.parametrize(("value", "error"), BAD_TIMEOUTS, ids=TIMEOUT_IDS)
@pytest.mark.parametrize(
    "call",
    [
        lambda q, t: q.get(timeout=t),
        lambda q, t: q.get_many(2, timeout=t),
        lambda q, t: q.put("x", timeout=t),
        lambda q, t: q.put_many(["x"], timeout=t),
        lambda q, t: q.join(timeout=t),
        lambda q, t: q.consumer().get(timeout=t),
    ],
    ids=["get", "get_many", "put", "put_many", "join", "consumer.get"],
)
def test_bad_timeouts_are_refused(
    q: mqlite.Queue[Any], call: Callable[..., object], value: object, error: type
) -> None:
    refused(q, error, "timeout", lambda: call(q, value))


@pytest.mark.parametrize(("value", "error"), BAD_SECONDS, ids=SECONDS_IDS)
def test_bad_put_delays_are_refused(q: mqlite.Queue[Any], value: object, error: type) -> None:
    refused(q, error, "delay", lambda: q.put("x", delay=value))
    refused(q, error, "delay", lambda: q.put_many(["x", "y"], delay=value))


@pytest.mark.parametrize(("value", "error"), [*BAD_SECONDS, (0, ValueError)], ids=[*SECONDS_IDS, "0"])
def test_bad_queue_leases_are_refused(value: object, error: type) -> None:
    with pytest.raises(error, match="lease"):
        mqlite.Queue("jobs", lease=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "error"), [*BAD_TIMEOUTS, (0, ValueError)], ids=[*TIMEOUT_IDS, "0"])
def test_bad_consumer_leases_are_refused(q: mqlite.Queue[Any], value: object, error: type) -> None:
    refused(q, error, "lease", lambda: q.consumer(lease=value))


@pytest.mark.parametrize(("value", "error"), BAD_SECONDS, ids=SECONDS_IDS)
def test_bad_extend_seconds_are_refused_and_the_lease_is_kept(q: mqlite.Queue[Any], value: object, error: type) -> None:
    msg = q.get()
    refused(q, error, "seconds", lambda: msg.extend(value))
    msg.ack()  # the delivery is still good


@pytest.mark.parametrize(("value", "error"), BAD_SECONDS, ids=SECONDS_IDS)
def test_bad_nack_delays_are_refused_and_the_delivery_can_still_settle(
    q: mqlite.Queue[Any], value: object, error: type
) -> None:
    msg = q.get()
    refused(q, error, "delay", lambda: msg.nack(delay=value))
    msg.nack(delay=1)


def test_bad_dedup_window_is_refused() -> None:
    with pytest.raises(ValueError, match="dedup_window"):
        mqlite.Queue("jobs", dedup_window=-1)


# -- bodies the serializer cannot encode --------------------------------------------------------

UNENCODABLE = [{1, 2}, object(), math.nan, {"when": b"bytes"}, {1: float("inf")}]


@pytest.fixture
def jq() -> mqlite.Queue[Any]:
    queue: mqlite.Queue[Any] = mqlite.Queue("json", serializer=JSON, clock=FakeClock())
    queue.put({"fine": True})
    return queue


@pytest.mark.parametrize("body", UNENCODABLE, ids=[type(b).__name__ for b in UNENCODABLE])
def test_json_refuses_a_body_it_cannot_encode(jq: mqlite.Queue[Any], body: object) -> None:
    error = refused(jq, SerializationError, ("body", "JSON"), lambda: jq.put(body))
    assert isinstance(error, ValueError)
    refused(jq, SerializationError, "body", lambda: jq.put_nowait(body, priority=3, group="g"))
    refused(jq, SerializationError, "body", lambda: jq.producer(priority=1).put(body))


@pytest.mark.parametrize("position", [0, 1, 2])
def test_put_many_with_one_unencodable_body_enqueues_none(jq: mqlite.Queue[Any], position: int) -> None:
    batch: list[object] = ["a", "b", "c"]
    batch[position] = {"bad": {1, 2}}
    error = refused(jq, SerializationError, ("body", f"#{position}"), lambda: jq.put_many(batch))
    assert "set" in str(error)
    next_id = jq.put("after")
    assert [m.id for m in jq.peek(10)][-1] == next_id


def test_put_many_from_a_generator_with_an_unencodable_body_enqueues_none(jq: mqlite.Queue[Any]) -> None:
    refused(jq, SerializationError, "#3", lambda: jq.put_many(x if x != 3 else object() for x in range(5)))


def test_async_puts_refuse_unencodable_bodies(jq: mqlite.Queue[Any]) -> None:
    import asyncio

    refused(jq, SerializationError, "body", lambda: asyncio.run(jq.aput({1})))
    refused(jq, SerializationError, "body", lambda: asyncio.run(jq.aput_many([1, {2}])))


@pytest.mark.parametrize("body", ["text", 5, None, ["b"], {"a": b"x"}])
def test_raw_refuses_non_bytes(body: object) -> None:
    q: mqlite.Queue[Any] = mqlite.Queue("raw", serializer=RAW, clock=FakeClock())
    q.put(b"ok")
    refused(q, SerializationError, ("bytes", type(body).__name__), lambda: q.put(body))
    refused(q, SerializationError, "bytes", lambda: q.put_many([b"a", body]))


def test_raw_accepts_bytes_like() -> None:
    q: mqlite.Queue[Any] = mqlite.Queue("raw", serializer=RAW, clock=FakeClock())
    q.put_many([b"a", bytearray(b"b"), memoryview(b"c")])
    assert [m.body for m in q.get_many(3)] == [b"a", b"b", b"c"]


def test_a_serializer_without_dumps_and_loads_is_refused() -> None:
    with pytest.raises(TypeError, match="serializer"):
        mqlite.Queue("jobs", serializer=object())  # type: ignore[arg-type]


def test_a_serializer_class_instead_of_an_instance_is_refused() -> None:
    """The class has dumps and loads too, as plain functions: every put would then fail."""
    with pytest.raises(TypeError, match=r"instance, not the class JsonSerializer: pass JsonSerializer\(\)"):
        mqlite.Queue("jobs", serializer=type(JSON))  # type: ignore[arg-type]


def test_a_header_name_that_is_not_text_is_named_as_the_name() -> None:
    q: mqlite.Queue[Any] = mqlite.Queue("jobs")
    with pytest.raises(TypeError, match="int name 1"):
        q.put("x", headers={1: "a"})  # type: ignore[dict-item]


# -- settles on a closed queue ------------------------------------------------------------------


@pytest.mark.parametrize(
    "verb",
    [
        lambda m: m.ack(),
        lambda m: m.nack(),
        lambda m: m.nack(delay=5, error="x"),
        lambda m: m.release(),
        lambda m: m.reject("r"),
        lambda m: m.extend(5),
    ],
    ids=["ack", "nack", "nack-delay", "release", "reject", "extend"],
)
def test_settles_on_a_closed_queue_raise_queue_closed(verb: Callable[[mqlite.Message[Any]], object]) -> None:
    storage, clock = mqlite.MemoryStorage(), FakeClock()
    q: mqlite.Queue[Any] = mqlite.Queue("jobs", storage=storage, clock=clock)
    q.put("a")
    msg = q.get()
    q.close()
    other: mqlite.Queue[Any] = mqlite.Queue("jobs", storage=storage, clock=clock)
    before = snapshot(other)
    with pytest.raises(QueueClosed, match="jobs"):
        verb(msg)
    assert snapshot(other) == before


# -- storage URLs and objects -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("nosuch://x", ("nosuch://x", "nosuch")),
        ("memory", ("memory", "scheme://")),
        ("memory://x", ("memory://x",)),
        ("", ("URL",)),
        ("://", ("URL",)),
    ],
)
def test_wrong_storage_urls_are_refused(url: str, words: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"storage|memory") as caught:
        mqlite.Queue("jobs", storage=url)
    for word in words:
        assert word in str(caught.value)
    with pytest.raises(ValueError, match=r"storage|memory"):
        mqlite.open_storage(url)


@pytest.mark.parametrize("storage", [5, b"memory://", object(), mqlite.MemoryStorage])
def test_storage_of_the_wrong_type_is_refused(storage: object) -> None:
    with pytest.raises(TypeError, match="storage"):
        mqlite.Queue("jobs", storage=storage)  # type: ignore[arg-type]


def test_open_storage_refuses_a_non_string() -> None:
    with pytest.raises(TypeError, match="URL"):
        mqlite.open_storage(5)  # type: ignore[arg-type]


def test_clock_must_be_callable() -> None:
    with pytest.raises(TypeError, match="clock"):
        mqlite.Queue("jobs", clock=1000.0)  # type: ignore[arg-type]


# -- message options ----------------------------------------------------------------------------

BAD_OPTIONS: list[tuple[dict[str, object], type[Exception], str]] = [
    ({"priority": "1"}, TypeError, "priority"),
    ({"priority": 1.5}, TypeError, "priority"),
    ({"priority": None}, TypeError, "priority"),
    ({"priority": True}, TypeError, "priority"),
    ({"priority": 2**31}, ValueError, "priority"),
    ({"priority": -(2**31) - 1}, ValueError, "priority"),
    ({"group": 5}, TypeError, "group"),
    ({"group": b"g"}, TypeError, "group"),
    ({"group": ""}, ValueError, "group"),
    ({"group": "g" * 1025}, ValueError, "group"),
    ({"group": "a\x00b"}, ValueError, "group"),
    ({"group": "a\udc80"}, ValueError, "group 'a\\udc80' cannot be written as UTF-8"),
    ({"dedup_key": 5}, TypeError, "dedup_key"),
    ({"dedup_key": ""}, ValueError, "dedup_key"),
    ({"dedup_key": "k" * 1025}, ValueError, "dedup_key"),
    ({"dedup_key": "\udc80"}, ValueError, "cannot be written as UTF-8"),
    ({"headers": [("a", "b")]}, TypeError, "headers"),
    ({"headers": "a=b"}, TypeError, "headers"),
    ({"headers": {"a": 1}}, TypeError, "headers"),
    ({"headers": {1: "a"}}, TypeError, "headers"),
    ({"headers": {"a": "\udc80"}}, ValueError, "header 'a' value"),
    ({"headers": {"\udc80": "a"}}, ValueError, "header name"),
    ({"headers": {"x-death-reason": "fake"}}, ValueError, "x-death-reason"),
    ({"headers": {"x-death-queue": "jobs"}}, ValueError, "x-death-queue"),
    ({"headers": {"x-death-detail": "d"}}, ValueError, "x-death-detail"),
    ({"headers": {"x-death-attempts": "1"}}, ValueError, "x-death-attempts"),
]
OPTION_IDS = [f"{next(iter(o))}={next(iter(o.values()))!r:.20}" for o, _, _ in BAD_OPTIONS]


@pytest.mark.parametrize(("options", "error", "word"), BAD_OPTIONS, ids=OPTION_IDS)
def test_bad_message_options_are_refused(q: mqlite.Queue[Any], options: dict[str, Any], error: type, word: str) -> None:
    refused(q, error, word, lambda: q.put("x", **options))
    refused(q, error, word, lambda: q.put_nowait("x", **options))
    if "dedup_key" not in options:
        refused(q, error, word, lambda: q.put_many(["x", "y"], **options))


@pytest.mark.parametrize(("options", "error", "word"), BAD_OPTIONS, ids=OPTION_IDS)
def test_bad_producer_defaults_are_refused_when_the_producer_is_made(
    q: mqlite.Queue[Any], options: dict[str, Any], error: type, word: str
) -> None:
    refused(q, error, word, lambda: q.producer(**options))


def test_unknown_producer_option_is_refused(q: mqlite.Queue[Any]) -> None:
    refused(q, TypeError, "colour", lambda: q.producer(colour="red"))
    refused(q, TypeError, "colour", lambda: q.producer().put("x", colour="red"))


def test_put_many_refuses_a_bad_dedup_key_and_a_single_body(q: mqlite.Queue[Any]) -> None:
    refused(q, TypeError, "dedup_key", lambda: q.put_many(["a", "b"], dedup_key=7))  # type: ignore[arg-type]
    refused(q, ValueError, "dedup_key", lambda: q.put_many(["a", "b"], dedup_key=""))
    refused(q, ValueError, "dedup_key", lambda: q.put_many(["a", "b"], dedup_key="k\x000"))
    refused(q, ValueError, "dedup_key", lambda: q.put_many(["a", "b"], dedup_key="k" * 1025))
    refused(q, TypeError, "put_many", lambda: q.put_many("abc"))
    refused(q, TypeError, "put_many", lambda: q.put_many({"a": 1}))


@pytest.mark.parametrize(
    ("call", "error", "word"),
    [
        (lambda m: m.nack(error=5), TypeError, "error"),
        (lambda m: m.reject(reason=5), TypeError, "reason"),
        (lambda m: m.reject(b"bytes"), TypeError, "reason"),
    ],
    ids=["nack-error", "reject-reason", "reject-bytes"],
)
def test_bad_settle_texts_are_refused_and_the_delivery_can_still_settle(
    q: mqlite.Queue[Any], call: Callable[[mqlite.Message[Any]], object], error: type, word: str
) -> None:
    msg = q.get()
    refused(q, error, word, lambda: call(msg))
    msg.ack()


# -- queue settings and counts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "word"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": -3}, ValueError, "max_attempts"),
        ({"max_attempts": 1.5}, TypeError, "max_attempts"),
        ({"max_attempts": "5"}, TypeError, "max_attempts"),
        ({"maxsize": -1}, ValueError, "maxsize"),
        ({"maxsize": 2.0}, TypeError, "maxsize"),
        ({"maxsize": None}, TypeError, "maxsize"),
        ({"max_attempts": 2**63}, ValueError, "max_attempts"),
        ({"maxsize": 2**31}, ValueError, "maxsize"),
    ],
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_bad_queue_settings_are_refused(options: dict[str, Any], error: type, word: str) -> None:
    storage = mqlite.MemoryStorage()
    with pytest.raises(error, match=word):
        mqlite.Queue("jobs", storage=storage, **options)
    assert storage._index.queues == {}


@pytest.mark.parametrize(
    ("call", "error", "word"),
    [
        (lambda q: q.consumer(prefetch=0), ValueError, "prefetch"),
        (lambda q: q.consumer(prefetch=1.0), TypeError, "prefetch"),
        (lambda q: q.consumer(auto_extend="yes"), TypeError, "auto_extend"),
        (lambda q: q.get_many(0), ValueError, "max_messages"),
        (lambda q: q.get_many("2"), TypeError, "max_messages"),
        (lambda q: q.peek(-1), ValueError, "n"),
        (lambda q: q.peek(1.0), TypeError, "n"),
        (lambda q: q.redrive(-1), ValueError, "max_messages"),
        (lambda q: q.redrive("all"), TypeError, "max_messages"),
        (lambda q: q.consumer(prefetch=2**63), ValueError, "prefetch"),
        (lambda q: q.get_many(2**63), ValueError, "max_messages"),
        (lambda q: q.peek(2**63), ValueError, "n"),
        (lambda q: q.redrive(2**63), ValueError, "max_messages"),
    ],
    ids=["prefetch0", "prefetch-float", "auto_extend", "get_many0", "get_many-str", "peek-1", "peek-float",
         "redrive-1", "redrive-str", "prefetch-huge", "get_many-huge", "peek-huge", "redrive-huge"],
)  # fmt: skip
def test_bad_counts_are_refused(
    q: mqlite.Queue[Any], call: Callable[[mqlite.Queue[Any]], object], error: type, word: str
) -> None:
    refused(q, error, word, lambda: call(q))


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_a_storage_called_directly_with_counts_beyond_any_queue_takes_them_as_no_limit(tmp_path, kind: str) -> None:
    """The front refuses counts above 2**31 - 1; a direct caller of a storage gets the answer a
    huge limit means, not an OverflowError from the database or the log's record format, and
    (the file log once changed its index before that failed) a log that reopens as it was."""
    huge = 2**63
    path = str(tmp_path / ("q.db" if kind == "sqlite" else "log"))
    storage: mqlite.storage.Storage = mqlite.SQLiteStorage(path) if kind == "sqlite" else mqlite.FileStorage(path)
    storage.open_queue(QueueSpec("q", huge))
    storage.put("q", [Envelope(b"a"), Envelope(b"b")], 1.0)
    assert [m.body for m in storage.peek("q", huge, 1.0)] == [b"a", b"b"]
    [first, second] = storage.lease("q", huge, 1.0, 30.0)
    storage.reject("q", [(first.id, first.token)], 1.0, "poison")
    assert storage.redrive("q", 1.0, huge) == 1
    storage.ack("q", [(second.id, second.token)], 1.0)
    storage.close()
    reopened = mqlite.SQLiteStorage(path) if kind == "sqlite" else mqlite.FileStorage(path)
    assert [m.body for m in reopened.peek("q", 10, 2.0)] == [b"a"]
    reopened.close()


def test_put_many_larger_than_maxsize_is_refused_at_once() -> None:
    q: mqlite.Queue[Any] = mqlite.Queue("bounded", maxsize=3, clock=FakeClock())
    q.put("a")
    for block in (True, False):
        refused(q, ValueError, ("put_many", "maxsize 3"), lambda b=block: q.put_many(range(4), block=b))
    refused(q, ValueError, "maxsize", lambda: q.producer().put_many(range(4)))
    q.put_many(range(2))  # exactly the room left
    assert q.qsize() == 3


def test_put_many_larger_than_the_free_room_raises_full_and_enqueues_none() -> None:
    q: mqlite.Queue[Any] = mqlite.Queue("bounded", maxsize=3, clock=FakeClock())
    q.put("a")
    refused(q, mqlite.Full, "bounded", lambda: q.put_many(range(3), block=False))
    refused(q, mqlite.Full, "bounded", lambda: q.put_many(range(3), timeout=0.01))


def test_a_raw_queue_accepts_producers_with_defaults() -> None:
    q: mqlite.Queue[Any] = mqlite.Queue("raw", serializer=RAW, clock=FakeClock())
    producer = q.producer(priority=2, headers={"k": "v"})
    producer.put(b"one")
    producer.put_many([b"two"])
    assert [(m.body, m.priority) for m in q.get_many(2)] == [(b"one", 2), (b"two", 2)]


# -- storages' own arguments, flags, iterables, the fake clock ----------------------------------


@pytest.mark.parametrize(
    ("make", "error", "word"),
    [
        (lambda d: mqlite.SQLiteStorage(None), TypeError, "path"),  # type: ignore[arg-type]
        (lambda d: mqlite.SQLiteStorage(123), TypeError, "path"),  # type: ignore[arg-type]
        (lambda d: mqlite.SQLiteStorage(b"x.db"), TypeError, "path"),  # type: ignore[arg-type]
        (lambda d: mqlite.SQLiteStorage(f"{d}/a\0b.db"), ValueError, "path"),
        (lambda d: mqlite.SQLiteStorage(f"{d}/q.db", durability=["full"]), ValueError, "durability"),  # type: ignore[arg-type]
        (lambda d: mqlite.SQLiteStorage(f"{d}/q.db", poll_interval="1"), TypeError, "poll_interval"),  # type: ignore[arg-type]
        (lambda d: mqlite.SQLiteStorage(f"{d}/q.db", busy_timeout="1"), TypeError, "busy_timeout"),  # type: ignore[arg-type]
        (lambda d: mqlite.SQLiteStorage(f"{d}/q.db", busy_timeout=math.inf), ValueError, "busy_timeout"),
        (lambda d: mqlite.SQLiteStorage(f"{d}/q.db", busy_timeout=1e300), ValueError, "busy_timeout"),
        (lambda d: mqlite.FileStorage(""), ValueError, "directory"),
        (lambda d: mqlite.FileStorage(f"{d}/a\0b"), ValueError, "directory"),
        (lambda d: mqlite.FileStorage(f"{d}/log", salvage="no"), TypeError, "salvage"),  # type: ignore[arg-type]
        (lambda d: mqlite.FileStorage(f"{d}/log", salvage=None), TypeError, "salvage"),  # type: ignore[arg-type]
        (lambda d: mqlite.open_storage(f"file://{d}/log?salvage=on"), ValueError, "salvage"),
    ],
    ids=["sqlite-None", "sqlite-int", "sqlite-bytes", "sqlite-NUL", "sqlite-durability-list", "poll_interval-str",
         "busy_timeout-str", "busy_timeout-inf", "busy_timeout-huge", "file-empty", "file-NUL", "salvage-str",
         "salvage-None", "salvage-url"],
)  # fmt: skip
def test_bad_storage_arguments_are_refused_naming_them(
    tmp_path, make: Callable[[str], object], error: type, word: str
) -> None:
    with pytest.raises(error, match=word):
        make(str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing created


def test_the_salvage_option_of_a_file_url_reads_yes_and_no(tmp_path) -> None:
    for value, salvage in (("1", True), ("Yes", True), ("true", True), ("0", False), ("no", False)):
        storage = mqlite.open_storage(f"file://{tmp_path}/log?salvage={value}")
        assert isinstance(storage, mqlite.FileStorage)
        assert storage.salvage is salvage
        storage.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda q: q.put("x", block="no"),
        lambda q: q.put_many(["x"], block=None),
        lambda q: q.get(block="no"),
        lambda q: q.consumer().get(block=None),
        lambda q: q.producer(block="no"),
    ],
    ids=["put", "put_many", "get", "consumer-get", "producer"],
)
def test_block_must_be_a_bool(q: mqlite.Queue[Any], call: Callable[[mqlite.Queue[Any]], object]) -> None:
    refused(q, TypeError, "block", lambda: call(q))


@pytest.mark.parametrize("bad", [None, 5])
def test_put_many_and_ack_many_name_what_they_take(q: mqlite.Queue[Any], bad: object) -> None:
    refused(q, TypeError, ("put_many", "bodies"), lambda: q.put_many(bad))  # type: ignore[arg-type]
    refused(q, TypeError, ("ack_many", "messages"), lambda: q.ack_many(bad))  # type: ignore[arg-type]


def test_the_fake_clock_refuses_times_past_every_float() -> None:
    from mqlite.testing import FakeClock

    clock = FakeClock(start=0.0)
    with pytest.raises(ValueError, match="start"):
        FakeClock(start=2**1100)
    with pytest.raises(ValueError, match="seconds"):
        clock.advance(2**1100)
    clock.advance(1e308)
    with pytest.raises(ValueError, match="past every finite time"):
        clock.advance(1e308)
    assert clock() == 1e308  # unchanged by the refused call
    with pytest.raises(ValueError, match="finite number, got nan"):
        clock.set(math.nan)
