"""The public surface: names, modules, docstrings, errors, generics, serializers, handles."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import pkgutil
import queue
import sys
import types
from typing import Any

import pytest

import mqlite
import mqlite.storage
from mqlite.serializers import JSON, PICKLE, RAW

# DESIGN.md section 1: the names users write after "mqlite.".
DESIGN_NAMES = {
    "Queue",
    "Message",
    "QueueStats",
    "Storage",
    "MemoryStorage",
    "SQLiteStorage",
    "open_storage",
    "serializers",
    "Error",
    "Empty",
    "Full",
    "QueueClosed",
    "LeaseLost",
    "SerializationError",
    "StorageError",
    "CorruptStorage",
    "StorageLocked",
}
# Types of objects the API hands out or accepts, exported for annotations.
HANDLE_NAMES = {"Consumer", "Producer", "Serializer"}


def storage_classes() -> dict[str, type]:
    """Every public Storage subclass defined in a module of ``mqlite.storage`` that imports
    (a storage needing an optional driver that is not installed is skipped)."""
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(mqlite.storage.__path__):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"mqlite.storage.{info.name}")
        except ImportError:
            continue
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, mqlite.Storage)
                and value is not mqlite.Storage
                and not name.startswith("_")
            ):
                found[name] = value
    return found


def test_all_is_exactly_the_designed_names() -> None:
    expected = DESIGN_NAMES | HANDLE_NAMES | set(storage_classes())
    assert set(mqlite.__all__) == expected
    assert len(mqlite.__all__) == len(set(mqlite.__all__))
    assert mqlite.__all__ == sorted(mqlite.__all__, key=lambda n: (n[0].islower(), n))


def test_every_name_in_all_exists() -> None:
    for name in mqlite.__all__:
        assert getattr(mqlite, name) is not None


def test_storages_are_exported_under_their_own_name() -> None:
    for name, cls in storage_classes().items():
        assert getattr(mqlite, name) is cls


def test_star_import_gives_all_and_nothing_private() -> None:
    namespace: dict[str, Any] = {}
    exec("from mqlite import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(mqlite.__all__)


def test_version() -> None:
    assert isinstance(mqlite.__version__, str)
    assert mqlite.__version__.count(".") >= 2


PUBLIC_CLASSES = sorted(name for name in mqlite.__all__ if isinstance(getattr(mqlite, name), type))


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_public_classes_report_module_mqlite(name: str) -> None:
    cls = getattr(mqlite, name)
    assert cls.__module__ == "mqlite"
    assert cls.__qualname__ == name


def public_callables() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for name in mqlite.__all__:
        value = getattr(mqlite, name)
        if isinstance(value, types.ModuleType):
            for sub in getattr(value, "__all__", []):
                found.append((f"{name}.{sub}", getattr(value, sub)))
            continue
        found.append((name, value))
        if isinstance(value, type):
            for attr, member in vars(value).items():
                if attr.startswith("_") or not (callable(member) or isinstance(member, property)):
                    continue
                found.append((f"{name}.{attr}", getattr(value, attr)))
    return found


@pytest.mark.parametrize(("name", "value"), public_callables(), ids=[n for n, _ in public_callables()])
def test_every_public_callable_has_a_docstring(name: str, value: object) -> None:
    if isinstance(value, property):
        value = value.fget
    doc = inspect.getdoc(value)
    assert doc, f"{name} has no docstring"
    assert doc.strip()


def test_modules_have_docstrings() -> None:
    for module in (mqlite, mqlite.serializers, mqlite.storage):
        assert inspect.getdoc(module)


# -- errors ------------------------------------------------------------------------------------


def test_every_error_is_an_mqlite_error() -> None:
    for name in ("Empty", "Full", "QueueClosed", "LeaseLost", "SerializationError", "StorageError"):
        assert issubclass(getattr(mqlite, name), mqlite.Error)
    assert issubclass(mqlite.Error, Exception)
    assert issubclass(mqlite.CorruptStorage, mqlite.StorageError)
    assert issubclass(mqlite.StorageLocked, mqlite.StorageError)


def test_empty_and_full_are_the_stdlib_ones() -> None:
    assert issubclass(mqlite.Empty, queue.Empty)
    assert issubclass(mqlite.Empty, asyncio.QueueEmpty)
    assert issubclass(mqlite.Full, queue.Full)
    assert issubclass(mqlite.Full, asyncio.QueueFull)


def test_stdlib_handlers_catch_mqlite_errors() -> None:
    q = mqlite.Queue("jobs", maxsize=1)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(asyncio.QueueEmpty):
        q.get(block=False)
    q.put(1)
    with pytest.raises(queue.Full):
        q.put_nowait(2)
    with pytest.raises(asyncio.QueueFull):
        q.put(2, block=False)


def test_serialization_error_is_a_value_error() -> None:
    assert issubclass(mqlite.SerializationError, ValueError)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="queue.ShutDown arrived in Python 3.13")
def test_queue_closed_is_the_stdlib_shutdown() -> None:
    assert issubclass(mqlite.QueueClosed, queue.ShutDown)  # type: ignore[attr-defined]
    assert issubclass(mqlite.QueueClosed, asyncio.QueueShutDown)  # type: ignore[attr-defined]
    q = mqlite.Queue("jobs")
    q.close()
    with pytest.raises(queue.ShutDown):  # type: ignore[attr-defined]
        q.get()


def test_errors_have_docstrings_saying_when_they_are_raised() -> None:
    for name in ("Empty", "Full", "QueueClosed", "LeaseLost", "SerializationError", "StorageError"):
        assert "raised" in (getattr(mqlite, name).__doc__ or "").lower()


# -- generics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Queue", "Message", "Consumer", "Producer"])
def test_generic_classes_are_subscriptable(name: str) -> None:
    alias = getattr(mqlite, name)[int]
    assert alias.__origin__ is getattr(mqlite, name)


def test_a_subscripted_queue_is_still_a_queue() -> None:
    q = mqlite.Queue[int]("numbers")
    assert isinstance(q, mqlite.Queue)
    q.put(1)
    assert q.get().body == 1


# -- serializers -------------------------------------------------------------------------------


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


@pytest.mark.parametrize(
    ("serializer", "body"),
    [
        (JSON, {"to": "ada@example.com", "n": [1, 2.5, None, True], "ünïcode": "✓"}),
        (JSON, "plain"),
        (JSON, None),
        (RAW, b"\x00\xffbytes"),
        (PICKLE, Point(1, 2)),
        (PICKLE, {"set": {1, 2}, "bytes": b"x", "tuple": (1, 2)}),
    ],
)
def test_serializers_round_trip(serializer: mqlite.Serializer[Any], body: object) -> None:
    data = serializer.dumps(body)
    assert isinstance(data, bytes)
    assert serializer.loads(data) == body
    q: mqlite.Queue[Any] = mqlite.Queue("ser", serializer=serializer)
    q.put(body)
    q.put_many([body, body])
    assert [m.body for m in q.get_many(3)] == [body, body, body]


def test_json_is_compact_utf8() -> None:
    assert JSON.dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


def test_serializers_satisfy_the_protocol_and_have_readable_reprs() -> None:
    for serializer, text in ((JSON, "JSON"), (RAW, "RAW"), (PICKLE, "PICKLE")):
        assert isinstance(serializer, mqlite.Serializer)
        assert repr(serializer) == f"mqlite.serializers.{text}"


def test_a_serializing_queue_hands_out_a_copy() -> None:
    body = {"a": 1}
    q: mqlite.Queue[Any] = mqlite.Queue("copy", serializer=JSON)
    q.put(body)
    got = q.get().body
    assert got == body
    assert got is not body


def test_a_custom_serializer_is_used() -> None:
    class Upper:
        def dumps(self, obj: str) -> bytes:
            return obj.upper().encode()

        def loads(self, data: bytes) -> str:
            return data.decode()

    q: mqlite.Queue[str] = mqlite.Queue("custom", serializer=Upper())
    q.put("shout")
    assert q.get().body == "SHOUT"


# -- storages and URLs -------------------------------------------------------------------------


def test_open_storage_memory() -> None:
    first = mqlite.open_storage("memory://")
    second = mqlite.open_storage("memory://")
    assert isinstance(first, mqlite.MemoryStorage)
    assert isinstance(first, mqlite.Storage)
    assert first is not second
    assert isinstance(mqlite.open_storage("MEMORY://"), mqlite.MemoryStorage)


def test_queue_storage_forms() -> None:
    assert isinstance(mqlite.Queue("a").storage, mqlite.MemoryStorage)
    assert isinstance(mqlite.Queue("a", storage="memory://").storage, mqlite.MemoryStorage)
    storage = mqlite.MemoryStorage()
    assert mqlite.Queue("a", storage=storage).storage is storage


def test_memory_storage_flags() -> None:
    assert mqlite.MemoryStorage.blocking_io is False
    assert mqlite.MemoryStorage.requires_bytes is False
    assert mqlite.Storage.blocking_io is True
    assert mqlite.Storage.requires_bytes is True


def test_queue_settings_are_readable() -> None:
    q = mqlite.Queue("jobs", lease=12.5, max_attempts=4, maxsize=7)
    assert (q.name, q.lease, q.max_attempts, q.maxsize, q.dead_letter, q.closed) == (
        "jobs",
        12.5,
        4,
        7,
        "jobs.dead",
        False,
    )
    assert "jobs" in repr(q)


def test_queue_stats_is_a_frozen_dataclass() -> None:
    stats = mqlite.QueueStats(1, 2, 3, 4, 5.0)
    assert [f.name for f in dataclasses.fields(stats)] == ["ready", "delayed", "in_flight", "dead", "oldest_ready_age"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.ready = 0  # type: ignore[misc]


# -- producers ---------------------------------------------------------------------------------


def test_producer_defaults_apply_and_calls_override_them() -> None:
    q: mqlite.Queue[str] = mqlite.Queue("jobs")
    urgent = q.producer(priority=5, group="g", headers={"source": "api"})
    assert urgent.queue is q
    assert urgent.defaults == {"priority": 5, "group": "g", "headers": {"source": "api"}}
    urgent.defaults["priority"] = 0  # a copy
    urgent.put("a")
    urgent.put("b", priority=1, group=None, headers={"source": "cli"})
    urgent.put_many(["c", "d"], group="h")
    seen = [(m.body, m.priority, m.group, dict(m.headers)) for m in q.peek(10)]
    assert seen == [
        ("a", 5, "g", {"source": "api"}),
        ("c", 5, "h", {"source": "api"}),
        ("d", 5, "h", {"source": "api"}),
        ("b", 1, None, {"source": "cli"}),
    ]


def test_producer_dedup_key_default_applies_to_put_many_as_a_batch_key() -> None:
    q: mqlite.Queue[str] = mqlite.Queue("jobs")
    once = q.producer(dedup_key="only-once")
    first = once.put("a")
    assert once.put("b") == first
    batch = once.put_many(["c", "d"])
    assert len(batch) == 2
    assert once.put_many(["c", "d"]) == batch
    assert q.qsize() == 3


def test_producer_delay_and_timeout_defaults() -> None:
    q: mqlite.Queue[str] = mqlite.Queue("jobs", maxsize=1)
    later = q.producer(delay=60, timeout=0.01)
    later.put("a")
    assert q.stats().delayed == 1
    with pytest.raises(mqlite.Full):
        later.put("b")
    with pytest.raises(mqlite.Full):
        later.put_nowait("b")


def test_producer_async_puts_use_defaults() -> None:
    q: mqlite.Queue[str] = mqlite.Queue("jobs")
    producer = q.producer(priority=3, block=True)

    async def main() -> None:
        await producer.aput("a")
        await producer.aput_many(["b"])

    asyncio.run(main())
    assert [m.priority for m in q.peek(2)] == [3, 3]


# -- messages and handles ----------------------------------------------------------------------


def test_message_is_immutable() -> None:
    q: mqlite.Queue[str] = mqlite.Queue("jobs")
    q.put("a", headers={"k": "v"})
    msg = q.get()
    for attribute in ("id", "body", "attempts", "enqueued_at", "priority", "group", "headers", "lease_expires_at"):
        with pytest.raises(AttributeError):
            setattr(msg, attribute, None)
    with pytest.raises(AttributeError):
        msg.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        msg.headers["k"] = "changed"  # type: ignore[index]
    assert msg.body == "a"
    assert dict(msg.headers) == {"k": "v"}


def test_message_attributes() -> None:
    now = 1234.5
    q: mqlite.Queue[str] = mqlite.Queue("jobs", clock=lambda: now, lease=10)
    mid = q.put("a", priority=2, group="g")
    msg = q.get()
    assert (msg.id, msg.body, msg.attempts, msg.enqueued_at, msg.priority, msg.group) == (mid, "a", 1, now, 2, "g")
    assert dict(msg.headers) == {}
    assert msg.lease_expires_at == now + 10
    assert str(mid) in repr(msg)


def test_sync_and_async_twins_exist() -> None:
    for cls, names in (
        (mqlite.Queue, ["put", "put_many", "get", "get_many", "join", "close"]),
        (mqlite.Consumer, ["get", "get_many"]),
        (mqlite.Producer, ["put", "put_many"]),
        (mqlite.Message, ["ack", "nack", "release", "reject", "extend"]),
    ):
        for name in names:
            assert inspect.iscoroutinefunction(getattr(cls, "a" + name)), f"{cls.__name__}.a{name}"


def test_handles_are_context_managers() -> None:
    for cls in (mqlite.Queue, mqlite.Consumer, mqlite.Message):
        for method in ("__enter__", "__exit__", "__aenter__", "__aexit__"):
            assert hasattr(cls, method), f"{cls.__name__}.{method}"
    for cls in (mqlite.Queue, mqlite.Consumer):
        for method in ("__iter__", "__aiter__"):
            assert hasattr(cls, method)


def test_every_storage_is_a_context_manager_that_closes_it(tmp_path) -> None:
    for make in (
        mqlite.MemoryStorage,
        lambda: mqlite.SQLiteStorage(tmp_path / "q.db"),
        lambda: mqlite.FileStorage(tmp_path / "log"),
    ):
        with make() as storage:
            with mqlite.Queue("jobs", storage) as q:
                q.put("kept")
            assert q.closed
        with pytest.raises(mqlite.StorageError, match="closed"):
            storage.put("jobs", [mqlite.storage.Envelope(b"late")], 0.0)


def test_consumer_settings_are_readable() -> None:
    q: mqlite.Queue[str] = mqlite.Queue("jobs", lease=30)
    consumer = q.consumer(lease=5)
    assert (consumer.queue, consumer.lease, consumer.held) == (q, 5.0, 0)
    assert q.consumer().lease == 30.0
