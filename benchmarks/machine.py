"""Machine description stored next to every benchmark figure: CPU, cores, RAM, torch, load, GPU.

    from machine import machine_info          # benchmarks/ is on sys.path when a script runs from it
    info = machine_info(device="cpu")         # call once at the start; add end_load() at the end

Numbers on a shared machine depend on what else runs: the 1/5/15-minute load averages at the start
and at the end of a run say how busy it was (on 2 cores, a load of 2 means fully used).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    """Cores this process may run on (affinity/cgroup-aware where the OS says so)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages, rounded (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """A JSON-ready description of this machine and the device a benchmark runs on.

    >>> info = machine_info()
    >>> sorted(info)[:3]
    ['cores', 'cpu_model', 'date_utc']
    """
    import psutil
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cores": _usable_cores(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "device": device,
        "load_average_at_start": load_average(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(idx)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(idx).total_memory / 2**30, 1)
    return info


def end_load(info: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end of the run to `info` (returned for chaining)."""
    info["load_average_at_end"] = load_average()
    return info


def check_device(device: str) -> str:
    """Fail early with a clear message when `device` is cuda but no GPU is visible."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: no CUDA GPU is visible on this machine")
    return device


if __name__ == "__main__":
    import json

    print(json.dumps(machine_info(), indent=2))
