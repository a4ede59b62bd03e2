"""Ctrl-C and SIGTERM as a request to stop at the next safe point, for ``edgecl learn``.

The first SIGINT or SIGTERM only sets a flag that :func:`edgecl.runtime.run.iter_run` reads
between updates, so no update and no checkpoint write is cut in half; a second one raises
KeyboardInterrupt at once (checkpoint writes are atomic, so even that loses nothing saved).
The shell convention for a process ended by a signal is exit status 128 + its number:
130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Callable as ``iter_run``'s ``stop``: True once a signal has asked the run to stop."""

    def __init__(self) -> None:
        self.signum: int | None = None        # the signal that asked to stop
        self.abort_signum: int | None = None  # a second one, which aborted at once

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    @property
    def abort_exit_code(self) -> int:
        return 128 + (self.abort_signum or signal.SIGINT)  # a plain KeyboardInterrupt: Ctrl-C

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self.abort_signum = signum
            raise KeyboardInterrupt  # asked twice: do not wait for the safe point
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to a :class:`StopRequest` inside the block, then put the
    previous handlers back (the CLI also runs in-process, under tests and in notebooks).
    Outside the main thread Python cannot take signals: the request then never fires."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {}
    try:
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, request.handle)
        yield request
    finally:
        for signum, handler in previous.items():
            # None: a handler not installed from Python, which cannot be put back
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
