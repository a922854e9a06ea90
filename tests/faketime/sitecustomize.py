"""Loaded (through PYTHONPATH) by test processes whose wall clock libfaketime moves (helpers.skewed).

Debian's libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 makes Python 3.11's ``time.sleep``
fail with EINVAL (its clock_nanosleep wrapper mishandles an absolute monotonic deadline), and with
the monotonic clock faked instead, ``threading.Event.wait`` never returns. So the monotonic clock
stays real, and sleeping goes through ``select`` (a relative timeout libfaketime leaves alone). The
skew itself is libfaketime's, for the whole process: ``time.time``, ``datetime``, and every clock
the SDKs read.
"""

import select
import time


def _sleep(seconds: float) -> None:
    if seconds > 0:
        select.select([], [], [], seconds)


time.sleep = _sleep
