"""Runs started in a child process (ftbench-reproduce, bench_real) stop with their parent.

`subprocess.run` leaves a child running when its parent gets SIGTERM (`kill PID`: the parent
dies, the child trains on) and SIGKILLs it 0.25 s after a Ctrl-C (before the child can write
its result.json). `run` starts the child in its own session (process group), so a Ctrl-C at the terminal
reaches it once, through the parent, and passes SIGINT and SIGTERM on to it, then waits.
"""

from __future__ import annotations

import signal
import subprocess
import threading

FORWARDED = (signal.SIGINT, signal.SIGTERM)


def run(command: list[str], **popen_kwargs) -> int:
    """Run `command` to its end and return its exit code; SIGINT/SIGTERM sent to this process go to it."""
    child = subprocess.Popen(command, start_new_session=True, **popen_kwargs)  # its own process group
    if threading.current_thread() is not threading.main_thread():  # signal handlers live on the main thread
        return child.wait()

    def forward(signum, frame):
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
