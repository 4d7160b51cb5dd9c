"""The machine a benchmark ran on, named the same way by every bench: the CPU's model name from /proc/cpuinfo (else
the platform's). Imports nothing heavy, so the start-up bench can use it without loading numpy or torch."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_info() -> dict[str, str]:
    """The first processor's /proc/cpuinfo fields (empty where there is no such file)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_name(info: dict[str, str] | None = None) -> str:
    """The CPU's model name, e.g. 'Intel(R) Xeon(R) Processor'."""
    info = cpu_info() if info is None else info
    return info.get("model name") or platform.processor() or platform.machine()
