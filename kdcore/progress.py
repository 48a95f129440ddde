"""Progress events: the fraction of a job's steps done over all its phases, with an ETA from this run's pace."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

EventFn = Callable[[str, dict[str, Any]], None]
PROGRESS_EVERY_S = 0.5  # progress events at most twice a second: enough for a bar, cheap for Redis


class Progress:
    def __init__(self, on_event: EventFn, total_steps: int, done_steps: int):
        self.on_event, self.total, self.done = on_event, max(1, total_steps), done_steps
        self.start_done, self.t0, self.last = done_steps, time.monotonic(), 0.0

    def step(self) -> bool:
        """Counts one step; True when a progress event is due (at most every PROGRESS_EVERY_S)."""
        self.done += 1
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return False
        self.last = now
        return True

    def rewind(self, steps: int) -> None:
        """Steps undone by a rollback (kdcore.rescue): they will be trained again."""
        self.done -= steps

    def emit(self, **fields: Any) -> None:
        ran = self.done - self.start_done
        eta = (time.monotonic() - self.t0) / ran * (self.total - self.done) if ran > 0 else None
        self.on_event("progress", {**fields, "step": self.done, "steps": self.total,
                                   "fraction": round(self.done / self.total, 4),
                                   "eta_s": None if eta is None else round(eta, 1)})
