"""What the command line hands a flow besides the Settings: where lines for the user go, how to wait, when it began."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Console:
    """A command's outside world: `out` prints a line the user asked for, `sleep` waits (tests pass a recorder)."""

    out: Callable[[str], None] = print
    sleep: Callable[[float], None] = time.sleep
    started: float = field(default_factory=time.monotonic)  # a run's summary reports the command's whole wall time
