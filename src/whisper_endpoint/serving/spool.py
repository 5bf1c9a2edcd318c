"""The folder that holds a server's uploads while they are transcribed, and the removal of folders left
by servers that were killed (SIGKILL, a crash) before they could clean up.

A folder belongs to a live server while that server holds an exclusive `flock` on the folder's lock
file; the kernel drops the lock when the process dies, however it dies. Process ids are only part of
the name, for people: in a container every restarted server is PID 1, so "is that PID alive?" kept a
killed predecessor's uploads for good.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SPOOL_PREFIX = "whisper-endpoint-"  # + the server's pid + a random part
LOCK_NAME = ".lock"
UNLOCKED_GRACE_S = 60  # a folder with no lock file yet may be one that a starting server is making


@dataclass(frozen=True)
class Spool:
    path: Path
    lock_fd: int

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.lock_fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def create_spool() -> Spool:
    """A new folder under the temp dir, locked for as long as this process lives (or until `close`)."""
    path = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-"))
    fd = os.open(path / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
    if not _try_lock(fd):  # a fresh folder: nobody else can hold it
        raise RuntimeError(f"could not lock {path}")
    return Spool(path, fd)


def remove_stale_spools() -> list[Path]:
    """Remove spool folders whose lock nobody holds; returns them."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}*-*"):
        if not folder.is_dir() or not folder.name[len(SPOOL_PREFIX) :].split("-", 1)[0].isdigit():
            continue
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDWR)
        except FileNotFoundError:
            if time.time() - folder.stat().st_mtime < UNLOCKED_GRACE_S:
                continue
            fd = -1  # left by an older version, or killed between making the folder and locking it
        except OSError:
            continue  # someone else's: not ours to remove
        try:
            if fd >= 0 and not _try_lock(fd):
                continue  # a live server's
            log.info("removing %s, left by a server that is gone", folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            if fd >= 0:
                os.close(fd)
    return removed
