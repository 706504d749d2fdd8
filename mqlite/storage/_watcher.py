"""One thread per storage that notices what other processes commit, for every waiter at once.

A storage shared by several processes (SQLite) hears nothing when another process puts, acks
or takes a message, so a caller blocked in this process must learn of it by looking. If every
blocked caller looked for itself, each on its own timer, fifty idle consumers would make fifty
looks per poll period, and a third of a core would go to waiting. A :class:`Watcher` looks
once per period for all of them: while anyone in this process waits (``waiting()``), it asks
the storage's ``version()`` (a number that changes when another process commits) with a
backoff from 1 ms to ``interval``, restarted whenever a lease found messages (:meth:`found`),
and calls ``changed()`` (which wakes waiters to look again) when it moved.

No change is missed: every look compares with the one before (pauses while nobody waits
included), and the first look of a thread counts as a change, so a commit made between a
caller's last check of the storage and its falling asleep is seen by the next look, whose
``changed()`` either wakes the caller or makes it check again before sleeping (the channel's
eventcount). ``version()`` must change when it starts counting anew (a new connection). The
thread starts when a caller starts waiting (:meth:`kick`) and ends after ``idle_exit`` seconds
without one, so a process that never waits runs no thread, and the thread never keeps its
storage alive (it holds the storage only while it calls ``version``).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

log = logging.getLogger("mqlite")


class Watcher:
    """Polls ``version`` for other processes' commits while ``waiting()``; calls ``changed()``.

    ``owner`` is the storage whose ``version`` method is called (held weakly); ``subscribers``
    is the storage's list of ``(changed, waiting)`` pairs, read at every look."""

    def __init__(
        self,
        owner: object,
        version: str,
        interval: float,
        subscribers: list[tuple[Callable[[], None], Callable[[], bool]]],
        idle_exit: float = 5.0,
    ) -> None:
        self._owner = weakref.ref(owner)
        self._version = version
        self._interval = interval
        self._subscribers = subscribers
        self._idle_exit = idle_exit
        self._lock = threading.Lock()  # guards _thread: a kick racing the thread's exit starts a new one
        self._kicked = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._found = False  # a lease found messages since the last look: keep looking often

    def kick(self) -> None:
        """A caller of this process starts waiting: look from now on (start the thread)."""
        self._kicked.set()
        with self._lock:
            if self._thread is not None or self._stopped.is_set():
                return
            thread = self._thread = threading.Thread(target=self._run, name="mqlite-watcher", daemon=True)
            try:
                thread.start()
            except BaseException:  # no thread (a limit reached): the next kick tries again
                self._thread = None
                raise

    def found(self) -> None:
        """A lease of this process found messages: traffic, so look again soon (1 ms) rather
        than backing off. Changes elsewhere that wake waiters who then find nothing (another
        queue's traffic) let the backoff grow, as before this watcher each waiter's own did."""
        self._found = True

    def stop(self) -> None:
        """The storage closed: end the thread at its next turn."""
        self._stopped.set()
        self._kicked.set()

    def _waiting(self) -> bool:
        return any(waiting() for _, waiting in list(self._subscribers))

    def _changed(self) -> None:
        for changed, _ in list(self._subscribers):
            try:
                changed()
            except Exception:  # a subscriber's failure must not end the watch for the others
                log.exception("mqlite: waking waiters after another process's change failed")

    def _run(self) -> None:
        seen: object = None
        fresh = True  # the first look of a thread has nothing to compare with: it counts as a change
        polls = 0
        try:
            while not self._stopped.is_set():
                self._kicked.clear()  # before reading waiting(): a later kick is never lost
                if not self._waiting():  # the last look stays the baseline: the next sees what came since
                    if not self._kicked.wait(self._idle_exit):
                        with self._lock:
                            if not self._kicked.is_set():  # no caller came: leave; a kick restarts
                                self._thread = None
                                return
                    continue
                time.sleep(min(self._interval, 0.001 * (1 << min(polls, 20))))
                owner = self._owner()
                if owner is None:
                    return
                failed = False
                try:
                    version = getattr(owner, self._version)()
                except Exception:
                    if self._stopped.is_set():
                        return
                    version, failed = object(), True  # cannot tell: the waiters look (and meet the error)
                del owner
                if fresh or version != seen:
                    self._changed()
                if self._found and not failed:
                    self._found, polls = False, 0
                else:
                    polls = 20 if failed else polls + 1
                seen, fresh = version, False
        finally:
            with self._lock:
                if self._thread is threading.current_thread():  # not a successor a kick started
                    self._thread = None
