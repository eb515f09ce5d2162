"""One writer per cache folder: an exclusive ``fcntl.flock`` on ``<folder>/.prepare.lock``.

``prepare`` (and ``experiment``'s executor around its prepare + split step) hold it while they write, so two
``prepare`` runs or ``experiment --shard`` jobs started together take turns: the second waits, is told who
holds the lock (pid, host, since when: the lock file's text), and then finds the first one's work to reuse.
The kernel releases a flock when its process dies, however it dies, so a lock file left by a killed run is
stale by construction and the next run takes it over at once. flock is per open file: the lock is made
re-entrant within a process by counting (a nested ``cache_lock`` of the same folder does not deadlock).
POSIX only (``fcntl``); on NFS, Linux maps flock to the server's byte-range locks.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

LOCK_NAME = ".prepare.lock"
_HELD: dict[str, list] = {}  # lock file -> [open descriptor, depth] of the locks this process holds


@contextmanager
def cache_lock(folder: str | Path, on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of cache ``folder`` (created if needed) for the block.

    Another process holding it makes this wait; ``on_wait(message)`` (default: a warning) is told once who
    holds it (pid, host, since when, from the lock file). ``fcntl.flock`` locks die with their process, so
    a lock file left by a killed run is taken over at once. Re-entrant within one process."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            message = f"{folder}: cache is being written by {holder}; waiting for it to finish"
            (on_wait or (lambda m: warnings.warn(m, stacklevel=4)))(message)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"prepare pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        try:
            yield path
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
