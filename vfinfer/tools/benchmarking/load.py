"""What else the machine was doing during a timing: the share of all cores that other processes
kept busy (Linux ``/proc/stat`` minus this process's CPU time), so that a report can say its times
are disturbed."""

import os
import time
from pathlib import Path

BUSY_SHARE = 0.10  # other processes using more than this share of the cores: timings flagged


def cpu_counters():
    """(CPU seconds all processes spent busy, this process's CPU seconds, wall clock) on
    Linux, else None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user..steal (guest time is already inside user)
    return busy / hz, time.process_time(), time.perf_counter()


def other_cpu_share(before, after, cores):
    """Share of all cores that other processes kept busy between two ``cpu_counters``."""
    if before is None or after is None:
        return None
    wall = after[2] - before[2]
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other / (wall * cores)) if wall > 0 else None
