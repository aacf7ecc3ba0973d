"""The `lockcell` command: serve a member, run a local cell."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from lockcell.cli.commands import add_client_commands, run_client_command


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"LOCKCELL_{name}", default)


def _on_off(text: str) -> bool:
    """``on``/``off`` (also true/false, yes/no, 1/0) as a flag's value."""
    lowered = text.strip().lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"lockcell: {what} must be HOST:PORT, got {text!r}")
    return host or "0.0.0.0", int(port)


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run one member of a cell",
                       description="Run one member of a lockcell cell. Every flag can also be "
                                   "set with the LOCKCELL_* variable named in its help.")
    p.add_argument("--cell", default=_env("CELL_NAME", "demo"),
                   help="cell name (LOCKCELL_CELL_NAME)")
    p.add_argument("--data-dir", default=_env("DATA_DIR", "./var/member"),
                   help="data directory; the member id is minted here (LOCKCELL_DATA_DIR)")
    p.add_argument("--name", default=_env("NAME_HINT", os.uname().nodename.split(".")[0]),
                   help="name hint for the member id, e.g. the pod name (LOCKCELL_NAME_HINT)")
    p.add_argument("--client-listen", default=_env("CLIENT_LISTEN", "127.0.0.1:7001"),
                   help="client API address (LOCKCELL_CLIENT_LISTEN)")
    p.add_argument("--peer-listen", default=_env("PEER_LISTEN", "127.0.0.1:7101"),
                   help="peer address (LOCKCELL_PEER_LISTEN)")
    p.add_argument("--advertise-client-url", default=_env("ADVERTISE_CLIENT_URL"),
                   help="client URL others use (LOCKCELL_ADVERTISE_CLIENT_URL)")
    p.add_argument("--advertise-peer-url", default=_env("ADVERTISE_PEER_URL"),
                   help="peer host:port others use (LOCKCELL_ADVERTISE_PEER_URL)")
    p.add_argument("--bootstrap", action="store_true",
                   default=_env("BOOTSTRAP").lower() in ("1", "true", "yes"),
                   help="start a brand-new cell with this member as its first voter, "
                        "if the data directory is new (LOCKCELL_BOOTSTRAP)")
    p.add_argument("--join", action="append",
                   default=[u for u in _env("JOIN").split(",") if u],
                   help="client URL of a member to ask for admission; repeatable "
                        "(LOCKCELL_JOIN, comma-separated)")
    p.add_argument("--lease-ms", type=int, default=int(_env("LEASE_MS", "12000")),
                   help="default session lease (LOCKCELL_LEASE_MS)")
    p.add_argument("--max-lock-delay-ms", type=int,
                   default=int(_env("MAX_LOCK_DELAY_MS", "60000")),
                   help="largest lock-delay a handle may ask for (LOCKCELL_MAX_LOCK_DELAY_MS)")
    p.add_argument("--grace-ms", type=int, default=int(_env("GRACE_MS", "45000")),
                   help="grace period clients are told (LOCKCELL_GRACE_MS)")
    p.add_argument("--tick-ms", type=int, default=int(_env("TICK_MS", "100")),
                   help="Raft tick; election timeout is 10 ticks (LOCKCELL_TICK_MS)")
    p.add_argument("--snapshot-every", type=int, default=int(_env("SNAPSHOT_EVERY", "20000")),
                   help="entries between snapshots (LOCKCELL_SNAPSHOT_EVERY)")
    p.add_argument("--segment-size", type=int,
                   default=int(_env("SEGMENT_SIZE", str(64 * 1024 * 1024))),
                   help="bytes per WAL segment file (LOCKCELL_SEGMENT_SIZE)")
    p.add_argument("--leader-inline-write-ms", type=float,
                   default=float(_env("LEADER_INLINE_WRITE_MS", "5.0")),
                   help="a leader whose log writes average less than this writes them in "
                        "its event loop, slower ones on a WAL thread; 0: always on the "
                        "thread (LOCKCELL_LEADER_INLINE_WRITE_MS)")
    p.add_argument("--leader-async-sync", type=_on_off,
                   default=_on_off(_env("LEADER_ASYNC_SYNC", "off")), metavar="on|off",
                   help="a leader writes its log in its loop and leaves the fdatasync to "
                        "Linux AIO where available: faster lock handovers, fewer writes "
                        "per second on a busy machine (LOCKCELL_LEADER_ASYNC_SYNC)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))


def _cell_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cell", help="run a local cell on loopback")
    cell_sub = p.add_subparsers(dest="cell_command", required=True)
    up = cell_sub.add_parser("up", help="start a local N-replica cell (Ctrl-C stops it)")
    up.add_argument("--replicas", type=int, default=3)
    up.add_argument("--dir", default="./var/cell", help="data, logs and pid files")
    up.add_argument("--client-base", type=int, default=7001)
    up.add_argument("--peer-base", type=int, default=7101)
    up.add_argument("--cell", default="demo")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `lockcell`."""
    parser = argparse.ArgumentParser(prog="lockcell",
                                     description="lockcell: a Chubby-style lock service")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _cell_parser(sub)
    add_client_commands(sub)
    return parser


def run_serve(args: argparse.Namespace) -> int:
    """`lockcell serve`."""
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client_host, client_port = _host_port(args.client_listen, "--client-listen")
    peer_host, peer_port = _host_port(args.peer_listen, "--peer-listen")
    admin_token = _env("ADMIN_TOKEN")
    peer_secret = _env("PEER_SECRET")
    if not peer_secret:
        print("lockcell: LOCKCELL_PEER_SECRET is not set; using the development secret",
              file=sys.stderr)
        peer_secret = "lockcell-dev-peer-secret"
    from lockcell.node.member import MemberConfig

    config = MemberConfig(
        cell=args.cell, data_dir=Path(args.data_dir), name_hint=args.name,
        client_host=client_host, client_port=client_port, peer_host=peer_host,
        peer_port=peer_port, client_url=args.advertise_client_url,
        peer_url=args.advertise_peer_url, bootstrap=args.bootstrap, join=tuple(args.join),
        admin_token=admin_token, peer_secret=peer_secret, lease_ms=args.lease_ms,
        max_lock_delay_ms=args.max_lock_delay_ms, grace_ms=args.grace_ms,
        tick_ms=args.tick_ms, snapshot_every=args.snapshot_every,
        segment_size=args.segment_size, leader_inline_write_ms=args.leader_inline_write_ms,
        leader_async_sync=args.leader_async_sync,
    )
    from lockcell.api.server import serve

    if _env("EVENT_LOOP", "uvloop") == "uvloop":
        import uvloop

        uvloop.run(serve(config))
    else:
        asyncio.run(serve(config))
    return 0


def run_cell_up(args: argparse.Namespace) -> int:
    """`lockcell cell up`: start a local cell and keep it running until Ctrl-C."""
    from lockcell.cli.localcell import LocalCell

    cell = LocalCell(Path(args.dir).resolve(), size=args.replicas,
                     client_base=args.client_base, peer_base=args.peer_base, cell=args.cell)
    print(f"starting a {args.replicas}-replica cell {args.cell!r} in {cell.root} ...")
    started = time.monotonic()
    try:
        cell.start(timeout=90)
    except (TimeoutError, KeyboardInterrupt) as exc:
        cell.stop()
        print(f"lockcell: the cell did not come up: {exc}; logs in {cell.root}/logs",
              file=sys.stderr)
        return 1
    first = cell.endpoints[0]
    print(f"cell {args.cell!r} is up after {time.monotonic() - started:.1f}s")
    print("  endpoints: " + ",".join(cell.endpoints))
    print(f"  pids:      {cell.root}/pids/*.pid   logs: {cell.root}/logs")
    print(f"  admin token: {cell.root}/admin-token")
    print("try:")
    print(f"  curl -s -XPOST {first}/v1/sessions -d '{{}}'")
    print(f"  curl -s {first}/v1/cluster")
    print("press Ctrl-C to stop")
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            time.sleep(0.5)
            for member in cell.members:
                if member.process is not None and member.process.poll() is not None:
                    print(f"member {member.index} exited with {member.process.returncode}; "
                          f"see {cell.root}/logs/member-{member.index}.log")
                    member.process = None
    finally:
        print("stopping the cell ...")
        cell.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lockcell` command."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "cell" and args.cell_command == "up":
        return run_cell_up(args)
    if getattr(args, "client_runner", None) is not None:
        return run_client_command(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
