"""A short tour of the lockcell client: a file, events, a lock and its sequencer.

    LOCKCELL_ENDPOINTS=http://127.0.0.1:7001,http://127.0.0.1:7002 python examples/client_demo.py
"""

from __future__ import annotations

import time

from lockcell.client import Cell, Event, HealthChange


def main() -> None:
    """Run the tour against LOCKCELL_ENDPOINTS (default: the local `make run` cell)."""
    def health(change: HealthChange) -> None:
        print(f"session {change.new.value}: {change.reason}")

    def on_event(event: Event) -> None:
        print(f"event {event.type} on {event.path or '(session)'}")

    with Cell() as cell:
        session = cell.session(on_jeopardy=health, on_safe=health, on_expired=health)
        config = session.open("/ls/local/demo-config", create="file",
                              events=["contents_modified"], on_event=on_event)
        stat = config.set(b"color=blue")
        print(f"wrote config, content generation {stat.content_generation}")
        print(f"config says {config.get().data.decode()!r}")

        with session.lock("/ls/local/demo-job") as lock:
            print(f"holding {lock.path}, lock generation {lock.lock_generation}")
            print(f"sequencer is current: {cell.check_sequencer(lock.sequencer)}")
            lock.check()  # raises LockLost if the lock may have been lost
        print(f"released; sequencer is current: {cell.check_sequencer(lock.sequencer)}")
        time.sleep(0.2)  # let the contents_modified event arrive
        session.close()


if __name__ == "__main__":
    main()
