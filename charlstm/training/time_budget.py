"""A --time budget for one invocation: its deadline, the pace of the steps, and what is
set aside for the final validation and the last save.

The training loop asks it two questions: is the budget spent (``spent``: no room left
for one more step, the final validation and the last save), and must a validation that
is running stop (``validation_must_stop``: the deadline, plus what was set aside for a
final validation, has passed). A run without a time budget has a TimeBudget whose
deadline is None; it answers "no" to both.
"""
from __future__ import annotations

import os
import statistics
import time
from collections import deque

EXIT_SECONDS = 0.1  # a --time budget keeps this for closing files and the last report
# ... and this beyond the final validation's estimate: one scheduler slice or a busy
# neighbour on a shared machine, during a validation of half a second, was enough to cut
# it short at the deadline in CI.
VALIDATION_SLACK_SECONDS = 0.25


def process_age() -> float:
    """Seconds since this process started (Linux: /proc), or 0 where that is unknown: a
    --time budget bounds the whole invocation, and interpreter start-up and imports take
    a few tenths of a second before the command line's module runs."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class StepPace:
    """How much slower the machine steps now than when the validation was last timed, to
    scale that timing for the final validation under a --time budget: a machine that
    becomes busy after the timing (another job, a browser) reads the validation slower
    too.

    Steps are gathered into buckets of at least ``bucket_seconds`` each (one step each
    for a model whose steps take longer), and the pace is the median of the last
    ``window`` buckets' mean step: one slow step or a short burst of load (a page fault,
    the garbage collector, another process waking) changes nothing, and sustained load
    shows within half a window, about half a second. Counted in steps alone, the window
    of a tiny model lasted milliseconds, and a burst of load on a shared machine looked
    sustained and ended a --time run seconds early."""

    def __init__(self, window: int = 15, bucket_seconds: float = 1 / 30):
        self.recent = deque(maxlen=window)  # mean step seconds of each recent bucket
        self.bucket_seconds = bucket_seconds
        self._bucket_sum, self._bucket_steps = 0.0, 0
        self.reference = None  # the median when the validation was timed
        self.waiting = False  # timed before a full window: take the next full one

    def add(self, seconds: float) -> None:
        """One training step's time (not the first of a process: it loads the kernels)."""
        self._bucket_sum += seconds
        self._bucket_steps += 1
        if self._bucket_sum < self.bucket_seconds:
            return
        self.recent.append(self._bucket_sum / self._bucket_steps)
        self._bucket_sum, self._bucket_steps = 0.0, 0
        if self.waiting and len(self.recent) == self.recent.maxlen:
            self.reference, self.waiting = statistics.median(self.recent), False

    def validation_timed(self) -> None:
        if len(self.recent) == self.recent.maxlen:
            self.reference, self.waiting = statistics.median(self.recent), False
        else:
            self.waiting = True

    def slowdown(self) -> float:
        """The current median over the reference's, at least 1: never less time than the
        validation took when timed."""
        if self.reference is None or self.waiting or not self.reference > 0:
            return 1.0
        return max(1.0, statistics.median(self.recent) / self.reference)


class TimeBudget:
    """The clock of one invocation of the training loop.

    ``deadline``: a time.perf_counter() value, or None for a run without a time budget.
    ``validation_chars``: characters the validation predicts (0: no validation).
    ``probe_validation``: a function returning seconds per validation character, timed
    on the first chunks of the validation text; called once, when the final validation
    must be estimated before any validation was timed.
    """

    def __init__(self, deadline: float | None, validation_chars: int, probe_validation):
        self.deadline = deadline
        self.validation_chars = validation_chars
        self._probe_validation = probe_validation
        self.pace = StepPace()
        self.save_seconds = 0.0  # the longest save so far
        self.step_seconds = 0.0  # the last step (0 until this invocation stepped)
        self.seconds_per_validation_char = None
        # What a validation running at the deadline may take past it (it is the final
        # one, scoring the model the run ends with); set as each validation starts.
        self.overrun_allowed = 0.0

    @property
    def limited(self) -> bool:
        return self.deadline is not None

    def seconds_left(self) -> float:
        return self.deadline - time.perf_counter()

    def validation_seconds(self) -> float:
        """What the final validation will take: the last validation's pace (or the
        probe's), scaled by how much slower steps run now than then."""
        if not self.validation_chars:
            return 0.0
        if self.seconds_per_validation_char is None:
            self.seconds_per_validation_char = self._probe_validation()
            self.pace.validation_timed()
        return self.seconds_per_validation_char * self.validation_chars * self.pace.slowdown()

    def final_validation_seconds(self) -> float:
        """What to set aside for the final validation: half again the estimate (a probe
        of a few chunks reads faster per character than a whole validation, whose text
        no longer fits in the caches) and a slack for pauses that are not ours."""
        if not self.validation_chars:
            return 0.0
        return 1.5 * self.validation_seconds() + VALIDATION_SLACK_SECONDS

    def training_seconds_left(self) -> float:
        """What the budget leaves for training from now: the deadline less the final
        validation and the exit (at least a millisecond). Annealing over a time budget
        ends its schedule there."""
        reserve = self.final_validation_seconds() + EXIT_SECONDS
        return max(self.seconds_left() - reserve, 1e-3)

    def step_timed(self, seconds: float, first: bool) -> None:
        """A training step took ``seconds``. The first of a process also loads (or
        compiles) the kernels: not what the next ones take, so it counts for at most a
        tenth of what is left and not towards the pace."""
        self.step_seconds = seconds
        if first:
            if self.limited:
                self.step_seconds = min(seconds, 0.1 * self.seconds_left())
        else:
            self.pace.add(seconds)

    def save_timed(self, seconds: float) -> None:
        self.save_seconds = max(self.save_seconds, seconds)

    def validation_started(self) -> None:
        self.overrun_allowed = self.final_validation_seconds() if self.limited else 0.0

    def validation_timed(self, seconds: float) -> None:
        self.seconds_per_validation_char = seconds / self.validation_chars
        self.pace.validation_timed()

    def spent(self) -> bool:
        """No room left for one more step, the final validation and the last save. Until
        this invocation has stepped (the kernels not yet loaded) only the save counts."""
        if not self.limited:
            return False
        needed = self.save_seconds + EXIT_SECONDS
        if self.step_seconds > 0:
            needed += self.step_seconds + self.final_validation_seconds()
        return time.perf_counter() + needed >= self.deadline

    def validation_must_stop(self) -> bool:
        """The deadline, and what the final validation may take past it, have passed
        (leaving room for two saves and the exit)."""
        return self.limited and (time.perf_counter() + 2 * self.save_seconds + EXIT_SECONDS
                                 >= self.deadline + self.overrun_allowed)

    def late_by(self) -> float:
        """Seconds past the deadline now (0 or less: in time, or no deadline)."""
        return time.perf_counter() - self.deadline if self.limited else 0.0
