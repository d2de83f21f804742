"""Preemption: SIGTERM or SIGUSR1 (what SLURM and cloud schedulers send before they kill a job) asks the run to
write a checkpoint at the next step boundary and exit cleanly; `--resume auto` continues from there.

The handler only sets a flag; the engine polls it once per step, together with the other ranks (a signal that
reaches one rank stops all of them at the same step).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["PreemptionFlag", "PREEMPTION_SIGNALS"]

PREEMPTION_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)


class PreemptionFlag:
    """Context manager: while active, the preemption signals set `requested` instead of killing the process.

    The previous handlers are restored on exit. Outside the main thread (where Python cannot install signal
    handlers) it does nothing and `requested` stays False.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in PREEMPTION_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
