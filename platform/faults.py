"""Named pause points, so that fault tests can interrupt a run at an exact moment instead of
relying on timing luck.

`DNCML_PAUSE_AT="<point>:<marker file>"` makes the process that reaches `pause_point(<point>)`
create the marker file and then sleep, until the test interrupts or kills it. Unset (always,
outside tests), a pause point costs one environment lookup.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_ENV = "DNCML_PAUSE_AT"


def pause_point(name: str, seconds: float = 3600.0) -> None:
    point, _, marker = os.environ.get(PAUSE_ENV, "").partition(":")
    if point != name or not marker:
        return
    Path(marker).touch()
    time.sleep(seconds)
