"""Client subcommands of `lockcell`: files, watch, lock, elect and cluster administration."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

from lockcell.client import (
    HANDLE_EVENTS,
    AsyncCell,
    AsyncHandle,
    AsyncLock,
    AsyncSession,
    ClusterView,
    Conflict,
    Event,
    HealthChange,
    LockBusy,
    LockcellError,
    LockDelay,
    LockLost,
    NotFound,
    SessionExpired,
    Stat,
    Unavailable,
)
from lockcell.client.aio import AsyncLockContext, finish_lock
from lockcell.client.core import DEFAULT_ENDPOINTS

EXIT_OK = 0
EXIT_ERROR = 1
"""The cell answered with an error (the message is printed)."""
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
"""No member could serve the call within ``--timeout``."""
EXIT_LOCK_LOST = 4
"""``lock`` / ``elect``: the lock may have been lost while the command ran; it was stopped."""
EXIT_NOT_ACQUIRED = 5
"""``lock`` / ``elect``: the lock was not acquired within ``--wait``."""
EXIT_INTERRUPTED = 130

CLIENT_COMMANDS = ("get", "put", "ls", "stat", "rm", "mkdir", "watch", "lock", "elect",
                   "cluster")

Runner = Callable[[argparse.Namespace, AsyncCell], Awaitable[int]]

EPILOG = f"""\
environment:
  LOCKCELL_ENDPOINTS     comma-separated member URLs (default {','.join(DEFAULT_ENDPOINTS)})
  LOCKCELL_ADMIN_TOKEN   admin token for `cluster add|promote|remove|transfer`

exit codes: 0 ok, 1 error from the cell, 2 usage, 3 cell unavailable, 4 lock lost
(command stopped), 5 lock not acquired in time; `lock` and `elect` otherwise exit with
their command's code (128+N when it died of signal N)."""


# ---------------------------------------------------------------------- parsers


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("cell options")
    group.add_argument("--endpoints", default=os.environ.get("LOCKCELL_ENDPOINTS"),
                       help="comma-separated member URLs (LOCKCELL_ENDPOINTS; default "
                            + ",".join(DEFAULT_ENDPOINTS) + ")")
    group.add_argument("--json", action="store_true", help="machine-readable output")
    group.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                       help="how long to keep retrying an unavailable cell (default 30)")
    return common


def _lock_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="give up (exit 5) if the lock is not acquired in time; 0 tries once "
                        "(default: wait as long as it takes)")
    p.add_argument("--lock-delay-ms", type=int, default=None,
                   help="lock-delay if this session expires while holding (0-60000; cell "
                        "default 60000). When it covers the grace period the command keeps "
                        "running through jeopardy; otherwise it is stopped at jeopardy")
    p.add_argument("--lease-ms", type=int, default=None, help="session lease to ask for")
    p.add_argument("--kill-after", type=float, default=5.0, metavar="SECONDS",
                   help="after SIGTERM, wait this long before SIGKILL (default 5)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="report acquisition, session health and release on stderr")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the command to run and its arguments")


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client subcommands to the `lockcell` parser."""
    common = _common()
    fmt = argparse.RawDescriptionHelpFormatter

    def add(name: str, help_text: str, runner: Runner,
            description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, parents=[common], epilog=EPILOG,
                           formatter_class=fmt, description=description or help_text)
        p.set_defaults(client_runner=runner, client_parser=p)
        return p

    p = add("get", "print a file's contents", _cmd_get,
            "Print the contents of the file at PATH (raw bytes; --json adds the stat).")
    p.add_argument("path")

    p = add("put", "write a file (created if missing)", _cmd_put,
            "Write DATA (or standard input, or --file) to the file at PATH, creating it if "
            "it does not exist. The parent directory must exist.")
    p.add_argument("path")
    p.add_argument("data", nargs="?", help="the contents (default: read standard input)")
    p.add_argument("--file", help="read the contents from this file")
    p.add_argument("--if-generation", type=int, default=None,
                   help="write only if the content generation is this (compare-and-set)")

    p = add("ls", "list a directory", _cmd_ls)
    p.add_argument("path")
    p.add_argument("-l", "--long", action="store_true", help="kind, size, lock state")

    p = add("stat", "show a node's metadata", _cmd_stat)
    p.add_argument("path")

    p = add("rm", "delete a node", _cmd_rm)
    p.add_argument("path")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="delete a directory and everything under it")

    p = add("mkdir", "create a directory", _cmd_mkdir)
    p.add_argument("path")
    p.add_argument("-p", "--parents", action="store_true",
                   help="create missing parents; no error if it exists")

    p = add("watch", "print events on a node as they arrive", _cmd_watch,
            "Open PATH with events and print each as it arrives (one line each; --json for "
            "JSON lines). master_failover means: events may have been lost, re-read. "
            "Stops on Ctrl-C, after --count events, or when the node goes away.")
    p.add_argument("path")
    p.add_argument("--events", default=",".join(HANDLE_EVENTS),
                   help="comma-separated events (default: all)")
    p.add_argument("--count", type=int, default=None, help="exit after this many events")
    p.add_argument("--lease-ms", type=int, default=None, help="session lease to ask for")

    p = add("lock", "run a command while holding a lock", _cmd_lock,
            "Acquire the lock at PATH (creating the file if needed) and run COMMAND while "
            "holding it, with LOCKCELL_SEQUENCER and LOCKCELL_LOCK_GENERATION in its "
            "environment. If the lock may be lost (the session enters jeopardy and the "
            "lock-delay does not cover the grace period, or the session expires) the "
            "command is stopped: SIGTERM to its process group, then SIGKILL. Exits with "
            "the command's exit code.\n\n  lockcell lock /ls/local/jobs/nightly -- ./run.sh")
    p.add_argument("path")
    p.add_argument("--shared", action="store_true", help="take the lock in shared mode")
    _lock_options(p)

    p = add("elect", "leader election: run a command while leader", _cmd_elect,
            "Chubby §2.6 primary election: acquire the lock at PATH, write your identity "
            "(--id) into the file, and run COMMAND while leader (like `lock`). Others read "
            "the file to find the leader (`lockcell get PATH`). The identity is cleared on "
            "a clean exit.\n\n  lockcell elect /ls/local/svc/leader --id $HOSTNAME -- ./serve")
    p.add_argument("path")
    p.add_argument("--id", help="this candidate's identity (required)")
    _lock_options(p)

    p = sub.add_parser("cluster", help="cell status and membership",
                       epilog=EPILOG, formatter_class=fmt,
                       description="Cell status and membership changes (the latter need "
                                   "the admin token).")
    p.set_defaults(client_runner=_cmd_cluster)
    csub = p.add_subparsers(dest="cluster_command", required=True)
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--admin-token", default=os.environ.get("LOCKCELL_ADMIN_TOKEN"),
                       help="admin token (LOCKCELL_ADMIN_TOKEN)")
    csub.add_parser("status", help="leader, term, commit index, members", parents=[common])
    csub.add_parser("members", help="the member table", parents=[common])
    c = csub.add_parser("add", help="add a learner", parents=[common, admin])
    c.add_argument("id")
    c.add_argument("url", help="the member's client URL")
    c.add_argument("peer_url", help="the member's peer address (host:port)")
    c = csub.add_parser("promote", help="promote a learner to voter", parents=[common, admin])
    c.add_argument("id")
    c = csub.add_parser("remove", help="remove a member", parents=[common, admin])
    c.add_argument("id")
    c = csub.add_parser("transfer", help="move leadership", parents=[common, admin])
    c.add_argument("id", nargs="?", help="target member (default: the most caught-up voter)")


# ---------------------------------------------------------------------- running


def _err(message: str) -> None:
    print(f"lockcell: {message}", file=sys.stderr, flush=True)


def split_command(args: argparse.Namespace) -> argparse.Namespace:
    """``lock PATH [options] -- COMMAND``: options between PATH and ``--`` land in the
    command part; parse them as options and keep only what follows ``--``."""
    cmd = getattr(args, "cmd", None)
    parser: argparse.ArgumentParser | None = getattr(args, "client_parser", None)
    if cmd is None or parser is None:
        return args
    if "--" in cmd:
        cut = cmd.index("--")
        before, after = cmd[:cut], cmd[cut + 1:]
        if before:
            args = parser.parse_args([*before, args.path], namespace=args)
        args.cmd = after
    elif cmd and cmd[0].startswith("-"):
        args = parser.parse_args([*cmd, args.path], namespace=args)
    return args


def run_client_command(args: argparse.Namespace) -> int:
    """Run a client subcommand parsed by a parser that :func:`add_client_commands` set up."""
    runner: Runner | None = getattr(args, "client_runner", None)
    if runner is None:
        _err("not a client command")
        return EXIT_USAGE
    args = split_command(args)
    try:
        return asyncio.run(_with_cell(args, runner))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _with_cell(args: argparse.Namespace, runner: Runner) -> int:
    try:
        cell = AsyncCell(args.endpoints, admin_token=getattr(args, "admin_token", None),
                         retry_for=args.timeout)
    except ValueError as exc:
        _err(f"bad --endpoints: {exc}")
        return EXIT_USAGE
    try:
        async with cell:
            return await runner(args, cell)
    except Unavailable as exc:
        _err(f"cell unavailable: {exc.message}")
        return EXIT_UNAVAILABLE
    except LockcellError as exc:
        _err(str(exc))
        return EXIT_ERROR


def _emit_json(value: Any, out: TextIO | None = None) -> None:
    print(json.dumps(value, sort_keys=True), file=out or sys.stdout, flush=True)


async def _open_existing(session: AsyncSession, path: str,
                         events: Sequence[str] = ()) -> AsyncHandle:
    return await session.open(path, events=events)


# ---------------------------------------------------------------------- files


async def _cmd_get(args: argparse.Namespace, cell: AsyncCell) -> int:
    session = await cell.session()
    handle = await _open_existing(session, args.path)
    contents = await handle.get()
    if args.json:
        try:
            text: str | None = contents.data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        _emit_json({"path": args.path, "data": base64.b64encode(contents.data).decode(),
                    "text": text, "stat": contents.stat.to_json()})
    else:
        sys.stdout.buffer.write(contents.data)
        sys.stdout.buffer.flush()
    return EXIT_OK


async def _cmd_put(args: argparse.Namespace, cell: AsyncCell) -> int:
    if args.file is not None:
        with open(args.file, "rb") as source:
            data = source.read()
    elif args.data is not None:
        data = args.data.encode()
    else:
        data = sys.stdin.buffer.read()
    session = await cell.session()
    if args.if_generation is not None:
        handle = await _open_existing(session, args.path)
        stat = await handle.set(data, if_generation=args.if_generation)
    else:
        handle = await session.open(args.path, create="file", data=data)
        if handle.created:
            stat = handle.opened_stat
        else:
            stat = await handle.set(data)
    if args.json:
        _emit_json({"path": args.path, "created": handle.created, "stat": stat.to_json()})
    else:
        verb = "created" if handle.created else "wrote"
        print(f"{verb} {args.path}: {len(data)} bytes, content generation "
              f"{stat.content_generation}", flush=True)
    return EXIT_OK


def _lock_text(stat: Stat) -> str:
    lock = stat.lock
    if lock.mode is None:
        text = "free"
    else:
        text = f"{lock.mode} x{lock.holders}" if lock.mode == "shared" else "exclusive"
    if lock.waiters:
        text += f" +{lock.waiters} waiting"
    return text


async def _cmd_ls(args: argparse.Namespace, cell: AsyncCell) -> int:
    session = await cell.session()
    handle = await _open_existing(session, args.path)
    children = await handle.readdir()
    if args.json:
        _emit_json([{"name": c.name, "stat": c.stat.to_json()} for c in children])
        return EXIT_OK
    for child in children:
        name = child.name + ("/" if child.stat.is_dir else "")
        if args.long:
            size = child.stat.children if child.stat.is_dir else child.stat.length
            flags = "e" if child.stat.ephemeral else "-"
            print(f"{child.stat.kind:<4} {flags} {size:>8} gen {child.stat.content_generation:<6}"
                  f" lock {_lock_text(child.stat):<14} {name}")
        else:
            print(name)
    sys.stdout.flush()
    return EXIT_OK


async def _cmd_stat(args: argparse.Namespace, cell: AsyncCell) -> int:
    session = await cell.session()
    handle = await _open_existing(session, args.path)
    stat = await handle.stat()
    if args.json:
        _emit_json({"path": args.path, "stat": stat.to_json()})
        return EXIT_OK
    rows = [("path", args.path), ("kind", stat.kind), ("ephemeral", str(stat.ephemeral).lower()),
            ("instance", str(stat.instance)),
            ("content generation", str(stat.content_generation)),
            ("lock generation", str(stat.lock_generation)),
            ("acl generation", str(stat.acl_generation)), ("checksum", stat.checksum)]
    if stat.is_dir:
        rows.append(("children", str(stat.children)))
    else:
        rows.append(("length", str(stat.length)))
    rows.append(("lock", _lock_text(stat)))
    if stat.lock.lock_delay_until_ms:
        rows.append(("lock delay until (ms)", str(stat.lock.lock_delay_until_ms)))
    for key, value in rows:
        print(f"{key + ':':<22} {value}")
    sys.stdout.flush()
    return EXIT_OK


async def _remove(session: AsyncSession, path: str, recursive: bool) -> int:
    handle = await _open_existing(session, path)
    removed = 0
    if recursive:
        stat = await handle.stat()
        if stat.is_dir:
            for child in await handle.readdir():
                removed += await _remove(session, f"{path.rstrip('/')}/{child.name}", True)
    await handle.delete()
    with contextlib.suppress(LockcellError):
        await handle.close()
    return removed + 1


async def _cmd_rm(args: argparse.Namespace, cell: AsyncCell) -> int:
    session = await cell.session()
    count = await _remove(session, args.path, args.recursive)
    if args.json:
        _emit_json({"path": args.path, "removed": count})
    else:
        print(f"removed {args.path}" + (f" ({count} nodes)" if count > 1 else ""), flush=True)
    return EXIT_OK


def _prefixes(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3 or parts[0] != "ls":
        return [path]
    return ["/" + "/".join(parts[:i]) for i in range(3, len(parts) + 1)]


async def _cmd_mkdir(args: argparse.Namespace, cell: AsyncCell) -> int:
    session = await cell.session()
    targets = _prefixes(args.path) if args.parents else [args.path]
    created = False
    for target in targets:
        handle = await session.open(target, create="dir")
        created = handle.created
        with contextlib.suppress(LockcellError):
            await handle.close()
    if not created and not args.parents:
        raise Conflict(f"{args.path} already exists")
    if args.json:
        _emit_json({"path": args.path, "created": created})
    elif created:
        print(f"created {args.path}", flush=True)
    return EXIT_OK


# ---------------------------------------------------------------------- watch


def _event_line(event: Event) -> str:
    if event.type == "master_failover":
        return f"{event.seq} master_failover (events may have been lost: re-read)"
    return f"{event.seq} {event.type} {event.path}"


def _health_printer(args: argparse.Namespace) -> Callable[[HealthChange], None]:
    def report(change: HealthChange) -> None:
        if getattr(args, "json", False):
            _emit_json({"session": change.new.value, "reason": change.reason}, sys.stderr)
        else:
            _err(f"session {change.new.value}: {change.reason}")
    return report


async def _cmd_watch(args: argparse.Namespace, cell: AsyncCell) -> int:
    events = [e.strip() for e in args.events.split(",") if e.strip()]
    session = await cell.session(lease_ms=args.lease_ms)
    report = _health_printer(args)
    session.on_jeopardy(report)
    session.on_safe(report)
    session.on_expired(report)
    handle = await _open_existing(session, args.path, events)
    if not args.json:
        _err(f"watching {args.path} for {', '.join(events)} (Ctrl-C stops)")
    seen = 0
    async for event in handle.events():
        if args.json:
            _emit_json({"seq": event.seq, "type": event.type, "path": event.path,
                        "synthetic": event.synthetic})
        else:
            print(_event_line(event), flush=True)
        seen += 1
        if args.count is not None and seen >= args.count:
            return EXIT_OK
        if event.type == "handle_invalid" and event.handle == handle.id:
            return EXIT_OK
    if not session.core.alive:
        _err("session expired")
        return EXIT_ERROR
    return EXIT_OK


# ---------------------------------------------------------------------- lock / elect


def _command(args: argparse.Namespace) -> list[str]:
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    return command


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _stop(process: asyncio.subprocess.Process, kill_after: float) -> None:
    _signal_group(process.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(kill_after):
            await process.wait()
    except TimeoutError:
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()


async def _hold_and_run(args: argparse.Namespace, cell: AsyncCell, *, shared: bool,
                        identity: str | None) -> int:
    command = _command(args)
    if not command:
        _err("no command given (put it after --)")
        return EXIT_USAGE
    verbose = bool(args.verbose)
    session = await cell.session(lease_ms=args.lease_ms)
    if verbose:
        report = _health_printer(args)
        session.on_jeopardy(report)
        session.on_safe(report)
        session.on_expired(report)
    wait_ms = None if args.wait is None else max(0, int(args.wait * 1000))
    context = AsyncLockContext(session, args.path, shared=shared, wait_ms=wait_ms,
                               lock_delay_ms=args.lock_delay_ms, create=True)
    try:
        lock = await context.__aenter__()
    except (LockBusy, LockDelay) as exc:
        _err(f"lock on {args.path} not acquired: {exc}")
        return EXIT_NOT_ACQUIRED
    if identity is not None and context.handle is not None:
        await context.handle.set(identity.encode())
    if verbose:
        _err(f"acquired {lock.mode} lock on {args.path}, generation {lock.lock_generation}"
             + ("" if lock.keeps_through_grace else
                " (lock-delay below the grace period: the command stops at jeopardy)"))
    env = dict(os.environ)
    env.update({"LOCKCELL_SEQUENCER": lock.sequencer,
                "LOCKCELL_LOCK_GENERATION": str(lock.lock_generation),
                "LOCKCELL_LOCK_PATH": args.path,
                "LOCKCELL_SESSION": session.id})
    if cell.endpoints.urls:
        env.setdefault("LOCKCELL_ENDPOINTS", ",".join(cell.endpoints.urls))
    if identity is not None:
        env["LOCKCELL_LEADER_ID"] = identity
    try:
        process = await asyncio.create_subprocess_exec(*command, env=env,
                                                       start_new_session=True)
    except OSError as exc:
        _err(f"cannot run {command[0]}: {exc}")
        await finish_lock(lock, context.handle, exc)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    code, lost = await _supervise(process, lock, args.kill_after)
    if lost is not None:
        _err(f"lock on {args.path} (generation {lock.lock_generation}) may be lost: {lost}; "
             "stopped the command")
        # Do not linger on a cell that cannot be reached: the cell expires the session.
        await cell.close(session_timeout=2.0)
        return EXIT_LOCK_LOST
    if identity is not None and context.handle is not None and not lock.lost:
        with contextlib.suppress(LockcellError):
            await context.handle.set(b"")
    try:
        await finish_lock(lock, context.handle, None)
    except LockLost as exc:
        _err(str(exc))
        return EXIT_LOCK_LOST
    except SessionExpired as exc:
        _err(f"lock on {args.path} may have been lost: {exc}")
        return EXIT_LOCK_LOST
    if verbose:
        _err(f"released {args.path}; command exited with {code}")
    return code


async def _supervise(process: asyncio.subprocess.Process, lock: AsyncLock,
                     kill_after: float) -> tuple[int, str | None]:
    """Wait for the command; stop it if the lock may be lost. Forwards SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    forwarded: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        def forward(sig: int = sig) -> None:
            forwarded.append(sig)
            _signal_group(process.pid, sig)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, forward)
    waiter = asyncio.ensure_future(process.wait())
    watcher = asyncio.ensure_future(lock.wait_lost())
    try:
        done, _ = await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            return _exit_code(waiter.result()), None
        reason = watcher.result()
        await _stop(process, kill_after)
        return _exit_code(await waiter), reason
    finally:
        watcher.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def _cmd_lock(args: argparse.Namespace, cell: AsyncCell) -> int:
    return await _hold_and_run(args, cell, shared=args.shared, identity=None)


async def _cmd_elect(args: argparse.Namespace, cell: AsyncCell) -> int:
    if not args.id:
        _err("elect needs --id NAME")
        return EXIT_USAGE
    return await _hold_and_run(args, cell, shared=False, identity=args.id)


# ---------------------------------------------------------------------- cluster


def _print_view(view: ClusterView, *, members_only: bool = False) -> None:
    if not members_only:
        leader = view.leader or "(unknown)"
        url = view.leader_url
        print(f"leader: {leader}" + (f" ({url})" if url else ""))
        print(f"term: {view.term}   commit index: {view.commit_index}")
        if view.joint:
            print(f"joint configuration: old {view.joint.get('old')} new {view.joint.get('new')}")
    print(f"{'ID':<24} {'ROLE':<8} {'URL':<28} {'PEER':<22} MATCH")
    for m in view.members:
        star = "*" if m.id == view.leader else " "
        match = "" if m.match_index is None else str(m.match_index)
        print(f"{m.id + star:<24} {m.role:<8} {m.url or '-':<28} {m.peer_url or '-':<22} "
              f"{match}")
    sys.stdout.flush()


async def _cmd_cluster(args: argparse.Namespace, cell: AsyncCell) -> int:
    what = args.cluster_command
    admin = what in ("add", "promote", "remove", "transfer")
    if admin and not cell.admin_token:
        _err("an admin token is needed (--admin-token or LOCKCELL_ADMIN_TOKEN)")
        return EXIT_USAGE
    try:
        if what == "add":
            view = await cell.add_member(args.id, args.url, args.peer_url)
        elif what == "promote":
            view = await cell.promote_member(args.id)
        elif what == "remove":
            view = await cell.remove_member(args.id)
        elif what == "transfer":
            view = await cell.transfer_leader(args.id)
        else:
            view = await cell.cluster()
    except NotFound as exc:
        _err(str(exc))
        return EXIT_ERROR
    if args.json:
        _emit_json(view.raw)
    else:
        _print_view(view, members_only=what == "members")
    return EXIT_OK
