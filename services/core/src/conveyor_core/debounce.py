"""Debounce and throttle a burst of submits: `Debounce(key, window_s, mode)`.

Submits of one job type that carry the same debounce key within a window
collapse into one job (as BullMQ's debounce), atomically in the submit script
(lua/lib/debounce.lua). Mode "keep-first": the window starts with the first
submit and every submit within it answers with that job (a throttle: at most
one job per window). Mode "replace": while the kept job has not started, each
submit within the window replaces its payload with the latest and starts the
window again; with `delay`, the job it creates is due a window from now, and
each replace pushes its start back to a window from now (a trailing debounce:
the job runs once the burst is quiet). A kept
job that already started is not changed: the submit creates a new one, which
the window then keeps. Keys are per job type, and per api key where the api
applies them (as Idempotency-Keys are).
"""

import math
from dataclasses import dataclass
from typing import Literal

DebounceMode = Literal["keep-first", "replace"]
DEBOUNCE_MODES: tuple[DebounceMode, ...] = ("keep-first", "replace")
# A key is a client's name for a burst: bounded, as an Idempotency-Key is.
DEBOUNCE_KEY_MAX_CHARS = 255
# The longest window: a day. A longer one is a schedule, not a burst.
MAX_DEBOUNCE_WINDOW_S = 86_400.0


class DebounceError(ValueError):
    """A debounce that cannot be: names the field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Debounce:
    key: str
    window_s: float
    mode: DebounceMode = "keep-first"
    # "replace" only: the job starts a window after the last submit of the burst.
    delay: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not 1 <= len(self.key) <= DEBOUNCE_KEY_MAX_CHARS:
            raise DebounceError("debounce_key", f"must be 1 to {DEBOUNCE_KEY_MAX_CHARS} characters")
        number = isinstance(self.window_s, int | float) and not isinstance(self.window_s, bool)
        if not number or not math.isfinite(self.window_s):
            raise DebounceError("debounce_window_s", "must be a number of seconds")
        if not 0 < self.window_s <= MAX_DEBOUNCE_WINDOW_S:
            raise DebounceError(
                "debounce_window_s", f"must be over 0 and at most {MAX_DEBOUNCE_WINDOW_S:g} s"
            )
        if self.mode not in DEBOUNCE_MODES:
            raise DebounceError("debounce_mode", f"must be one of {', '.join(DEBOUNCE_MODES)}")
        if self.delay and self.mode != "replace":
            raise DebounceError("debounce_delay", "pushes a start back in mode replace only")

    @property
    def window_ms(self) -> int:
        return max(math.ceil(self.window_s * 1000), 1)

    @property
    def script_mode(self) -> str:
        """The mode as submit.lua reads it."""
        return "replace-delay" if self.delay else self.mode
