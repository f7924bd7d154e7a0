"""What initialize() returns as its lr scheduler when the config has a DeepSpeed "scheduler"
block. The C++ engine applies that schedule itself at every applied optimizer step (Note
[scheduler stepping] in include/strata/base/lr_schedule.h); DeepSpeed returns its scheduler
object there, and scripts written for it log `lr_scheduler.get_last_lr()` or read
`last_batch_iteration`. This view answers those from the engine, so such scripts run
unchanged instead of failing on None. It holds no state of its own: the engine's step
count is the schedule's position, and checkpoints carry that.
"""
from __future__ import annotations

import warnings

from .errors import UsageError


class ConfigScheduler:
    """DeepSpeed's scheduler methods over the schedule the engine applies."""

    def __init__(self, engine, kind: str):
        self._engine = engine
        self.kind = kind  # the config's scheduler.type, e.g. "WarmupLR"
        self._step_warned = False

    @property
    def last_batch_iteration(self) -> int:
        # DeepSpeed's count: -1 when built, one more after each applied optimizer step.
        return self._engine.global_steps - 1

    def get_last_lr(self) -> list[float]:
        """Each parameter group's lr for the next optimizer step."""
        return list(self._engine.get_lr())

    get_lr = get_last_lr

    def step(self, *args, **kwargs) -> None:
        """Does nothing: engine.step() advances the config's schedule at every applied
        optimizer step, as DeepSpeed's engine does. A second advance here would run the
        schedule twice as fast; DeepSpeed would take it, strata says so once instead."""
        if not self._step_warned:
            warnings.warn(f"strata: lr_scheduler.step() on the config's {self.kind} schedule does nothing: "
                          "engine.step() advances it at every applied optimizer step", stacklevel=2)
            self._step_warned = True

    def state_dict(self) -> dict:
        return {"last_batch_iteration": self.last_batch_iteration}

    def load_state_dict(self, state_dict: dict) -> None:
        """Accepts only the engine's own position: engine.load_checkpoint restores the step
        count, and with it the schedule."""
        want = state_dict.get("last_batch_iteration")
        if want != self.last_batch_iteration:
            raise UsageError(f"failed_precondition: the config's {self.kind} schedule is at iteration "
                             f"{self.last_batch_iteration} (the engine's step count) and cannot be moved to {want}; "
                             "engine.load_checkpoint restores the step count and the schedule with it")
