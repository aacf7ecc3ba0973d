"""Build a state-machine image in a forked child, so the event loop keeps serving meanwhile.

Serialising a large cell takes seconds of CPU (about 5 s at 500,000 files); done on the
event loop it starves heartbeats and costs elections. A child forked at the moment of the
snapshot sees a copy-on-write view of the state frozen at that instant, serialises it at a
lower CPU priority and streams the bytes back through a pipe, while the parent goes on
applying entries. The parent reads the pipe on a worker thread (the read releases the GIL).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import struct
from collections.abc import Callable

_LENGTH = struct.Struct("<Q")
CHILD_NICENESS = 5
"""How much lower than the serving process the imaging child runs."""


class ImagingFailed(Exception):
    """The child died or sent a short image; nothing was built."""


def can_fork() -> bool:
    """Whether this platform can image in a child process."""
    return hasattr(os, "fork")


class ImageChild:
    """A forked child producing one image; :meth:`collect` blocks, so call it on a thread."""

    def __init__(self, pid: int, read_fd: int) -> None:
        self.pid = pid
        self._read_fd = read_fd
        self._reaped = False

    def collect(self) -> bytes:
        """The image bytes, once the child has sent them all and exited cleanly."""
        try:
            with os.fdopen(self._read_fd, "rb") as pipe:
                head = pipe.read(_LENGTH.size)
                data = b""
                if len(head) == _LENGTH.size:
                    (size,) = _LENGTH.unpack(head)
                    data = pipe.read(size)
                    complete = len(data) == size
                else:
                    complete = False
        finally:
            status = self._reap()
        if not complete or status != 0:
            raise ImagingFailed(f"imaging child {self.pid} exited with {status} after "
                                f"sending {'all' if complete else 'part'} of the image")
        return data

    def kill(self) -> None:
        """Stop the child (the member is shutting down); :meth:`collect` then fails."""
        if not self._reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _reap(self) -> int:
        if self._reaped:
            return -1
        _, status = os.waitpid(self.pid, 0)
        self._reaped = True
        return os.waitstatus_to_exitcode(status)


def fork_image(make: Callable[[], bytes]) -> ImageChild:
    """Fork a child that runs ``make()`` on its copy of the process and pipes the result.

    ``make`` must only read in-memory state. The child keeps no inherited descriptor but
    the pipe (so it holds no listening socket, peer link or directory lock), ignores the
    parent's signal plumbing, and leaves with ``os._exit`` (no atexit handlers, no
    flushing of the parent's buffers). Raises ``OSError`` when the fork itself fails.
    """
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        _run_child(make, read_fd, write_fd)
    os.close(write_fd)
    return ImageChild(pid, read_fd)


def _run_child(make: Callable[[], bytes], read_fd: int, write_fd: int) -> None:  # pragma: no cover
    code = 1
    try:
        gc.disable()  # a collection would touch (and so copy) every tracked object's page
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        os.close(read_fd)
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, os.sysconf("SC_OPEN_MAX"))
        with contextlib.suppress(OSError):
            os.nice(CHILD_NICENESS)
        data = make()
        _write_all(write_fd, _LENGTH.pack(len(data)))
        _write_all(write_fd, data)
        code = 0
    finally:
        os._exit(code)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
