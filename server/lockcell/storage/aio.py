"""fdatasync without blocking the event loop or a thread: Linux AIO, completed on an eventfd.

A leader that calls ``fdatasync`` in its loop stops serving for the length of every sync;
one that hands it to a thread pays for the hand-off and for getting the GIL back while the
loop is busy. Linux AIO (``IOCB_CMD_FDSYNC``, since Linux 4.18) runs the sync on a kernel
worker and signals an eventfd that the loop watches like any socket, so neither happens.
The system calls are made through ``ctypes`` (no C extension to build): the loop thread
submits and reaps, the kernel does the rest. :func:`open_syncer` returns ``None`` where
this is not available (another OS or architecture, a kernel without AIO, a seccomp policy
that refuses it, the system's AIO limit reached); callers then sync as they did before.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import os
import platform
import sys
from collections.abc import Callable

log = logging.getLogger("lockcell.storage")

_SYSCALLS = {  # io_setup, io_destroy, io_getevents, io_submit
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1
_MAX_EVENTS = 64
"""Syncs that may be in flight at once (the driver has one)."""
_Long = ctypes.c_long
"""Every integer argument of ``syscall(2)`` travels as a long (it is variadic)."""


class _Iocb(ctypes.Structure):
    """``struct iocb`` of <linux/aio_abi.h> (little-endian field order)."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    """``struct io_event`` of <linux/aio_abi.h>."""

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


SyncDone = Callable[[OSError | None], None]
"""Called on the loop when a sync ends: ``None``, or the sync's error."""


class AioSyncer:
    """Runs ``fdatasync`` on the kernel's AIO workers; each :meth:`sync` reports on the
    loop that created the syncer. Use :func:`open_syncer`; :meth:`close` when done."""

    def __init__(self, loop: asyncio.AbstractEventLoop, numbers: tuple[int, int, int, int],
                 syscall: Callable[..., int]) -> None:
        self._loop = loop
        self._setup, self._destroy, self._getevents, self._submit = (_Long(n) for n in numbers)
        self._syscall = syscall
        self._context = ctypes.c_ulong(0)
        if syscall(self._setup, _Long(_MAX_EVENTS), ctypes.byref(self._context)) < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"io_setup: {os.strerror(error)}")
        try:
            self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            syscall(self._destroy, self._context)
            raise
        self._events = (_IoEvent * _MAX_EVENTS)()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[_Iocb, SyncDone]] = {}
        self._closed = False
        loop.add_reader(self._eventfd, self._reap)

    def sync(self, fd: int, done: SyncDone) -> None:
        """Sync ``fd``: ``done`` is called (from the loop, never from this call) once
        everything written to it before this call is durable, or with the error."""
        if self._closed:
            self._loop.call_soon(done, OSError("the syncer is closed"))
            return
        request_id = next(self._ids)
        iocb = _Iocb(aio_data=request_id, aio_lio_opcode=_IOCB_CMD_FDSYNC, aio_fildes=fd,
                     aio_flags=_IOCB_FLAG_RESFD, aio_resfd=self._eventfd)
        pointers = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(iocb))
        if self._syscall(self._submit, self._context, _Long(1), pointers) != 1:
            error = ctypes.get_errno()
            self._loop.call_soon(done, OSError(error, f"io_submit: {os.strerror(error)}"))
            return
        self._pending[request_id] = (iocb, done)

    @property
    def in_flight(self) -> int:
        """Syncs submitted and not yet completed."""
        return len(self._pending)

    def _reap(self) -> None:
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            return
        while self._pending:
            count = self._syscall(self._getevents, self._context, _Long(0),
                                  _Long(_MAX_EVENTS), self._events, None)
            if count <= 0:
                return
            for event in self._events[:count]:
                entry = self._pending.pop(event.data, None)
                if entry is None:
                    continue
                error = -event.res
                entry[1](OSError(error, f"fdatasync: {os.strerror(error)}") if error > 0
                         else None)

    def close(self) -> None:
        """Stop watching the eventfd and release the AIO context; syncs still in flight
        complete in the kernel first (``io_destroy`` waits for them) and are reported as
        failed (nothing watches the eventfd any more)."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._eventfd)
        self._syscall(self._destroy, self._context)
        os.close(self._eventfd)
        pending, self._pending = self._pending, {}
        for _, done in pending.values():
            done(OSError("the syncer was closed before the sync ended"))


def open_syncer(loop: asyncio.AbstractEventLoop) -> AioSyncer | None:
    """An :class:`AioSyncer` on ``loop``, or ``None`` (logged) where Linux AIO cannot be
    used here."""
    numbers = _SYSCALLS.get(platform.machine()) if sys.platform == "linux" else None
    if numbers is None:
        log.info("no Linux AIO on %s/%s: the log is synced without it",
                 sys.platform, platform.machine())
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        return AioSyncer(loop, numbers, syscall)
    except (OSError, AttributeError) as exc:
        log.info("Linux AIO is not available (%s): the log is synced without it", exc)
        return None
