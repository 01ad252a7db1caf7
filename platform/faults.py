"""Named pause points, so that fault tests can interrupt a run at an exact moment instead of
relying on timing luck.

`DNCML_PAUSE_AT="<point>:<marker file>"` makes the process that reaches `fault_point(<point>)`
create the marker file and then sleep, until the test interrupts or kills it, or removes the
marker (then the process goes on: a test can change the world, e.g. fill the disk, in between);
`DNCML_CRASH_AT="<point>"` makes it die there at once (as a segfault or an OOM kill would), every
time. Unset (always, outside tests), a fault point costs two environment lookups.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_ENV, CRASH_ENV = "DNCML_PAUSE_AT", "DNCML_CRASH_AT"


def fault_point(name: str, seconds: float = 3600.0) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os._exit(70)
    point, _, marker = os.environ.get(PAUSE_ENV, "").partition(":")
    if point != name or not marker:
        return
    Path(marker).touch()
    deadline = time.monotonic() + seconds
    while Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
