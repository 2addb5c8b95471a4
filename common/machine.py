"""What else the machine was doing during a measurement, and what the machine is: the one meter.

On a shared 2-core machine a latency figure means little without the CPU that other processes
took meanwhile, so every load test, benchmark and speed measurement (loadtest, the export's
variant choice, training.loso speed) records it next to its numbers with
:class:`OtherLoadMonitor`, and describes the machine with :func:`machine_description`.
"Other" means every process outside this one, its descendants and the servers it started.
"""

from __future__ import annotations

import functools
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


@dataclass(frozen=True)
class OtherLoad:
    """CPU used by processes outside the measurement, as a share of all cores (1.0 = every core busy)."""

    share_of_machine: float
    seconds: float
    busiest: list[tuple[str, float]]  # (command, share of the machine), largest first

    def to_dict(self) -> dict[str, Any]:
        return {
            "share_of_machine": round(self.share_of_machine, 3),
            "seconds": round(self.seconds, 1),
            "busiest": [{"command": command, "share": round(share, 3)} for command, share in self.busiest],
        }

    def describe(self) -> str:
        top = ", ".join(f"{command} {share:.0%}" for command, share in self.busiest[:3]) or "none"
        return f"other processes used {self.share_of_machine:.0%} of the CPU (busiest: {top})"


def _command(process: psutil.Process) -> str:
    try:
        words = process.cmdline()[:4] or [process.name()]
    except (psutil.Error, OSError):
        return "?"
    return " ".join(Path(words[0]).name if index == 0 else word for index, word in enumerate(words))[:80]


@dataclass
class OtherLoadMonitor:
    """Samples every process's CPU time every `interval_seconds` in a background thread.

    Ours: this process, its descendants, and the trees of `own_process_ids` (servers started
    with start_new_session, so not our descendants in the process tree's sense after a re-parent).
    """

    interval_seconds: float = 1.0
    own_process_ids: set[int] = field(default_factory=set)
    _previous: dict[int, float] = field(default_factory=dict)
    _commands: dict[int, str] = field(default_factory=dict)
    _other_seconds: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0

    def _own(self) -> set[int]:
        own = set()
        for root in (os.getpid(), *self.own_process_ids):
            own.add(root)
            try:
                own.update(child.pid for child in psutil.Process(root).children(recursive=True))
            except psutil.Error:
                continue
        return own

    def _sample(self, count: bool) -> None:
        own = self._own()
        current: dict[int, float] = {}
        for process in psutil.process_iter():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            current[process.pid] = times.user + times.system
        if count:
            for pid, seconds in current.items():
                if pid in own:
                    continue
                # Born since the last sample: all of its time is new (a reused pid starts lower).
                before = self._previous.get(pid, 0.0)
                delta = seconds - before if seconds >= before else seconds
                if delta <= 0:
                    continue
                if pid not in self._commands:
                    try:
                        self._commands[pid] = _command(psutil.Process(pid))
                    except psutil.Error:
                        self._commands[pid] = "?"
                command = self._commands[pid]
                self._other_seconds[command] = self._other_seconds.get(command, 0.0) + delta
        self._previous = current

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self._sample(count=True)

    def start(self) -> OtherLoadMonitor:
        self._previous, self._commands, self._other_seconds = {}, {}, {}
        self._sample(count=False)
        self._stop.clear()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="other-load-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> OtherLoad:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(count=True)
        elapsed = max(time.monotonic() - self._started, 1e-9)
        capacity = elapsed * (psutil.cpu_count() or 1)
        busiest = sorted(self._other_seconds.items(), key=lambda item: item[1], reverse=True)[:5]
        total = sum(self._other_seconds.values())
        return OtherLoad(
            share_of_machine=total / capacity,
            seconds=total,
            busiest=[(command, seconds / capacity) for command, seconds in busiest],
        )


# CPU flags (Linux /proc/cpuinfo names) with which oneDNN computes bfloat16 natively.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpu_info_lines() -> tuple[str, ...]:
    """/proc/cpuinfo's lines, read once per process (none where there is no such file)."""
    cpu_info = Path("/proc/cpuinfo")
    return tuple(cpu_info.read_text().splitlines()) if cpu_info.is_file() else ()


def _cpu_info(field_name: str) -> str:
    """The first `field_name` line's value in /proc/cpuinfo ("" where there is none)."""
    for line in _cpu_info_lines():
        if line.startswith(field_name):
            return line.split(":", 1)[1].strip()
    return ""


def cpu_flags() -> set[str]:
    return set(_cpu_info("flags").split())


def computes_bfloat16() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX (bfloat16 mixed precision pays; elsewhere it is
    emulated or skipped)."""
    return bool(cpu_flags() & set(BFLOAT16_CPU_FLAGS))


def machine_description() -> dict[str, Any]:
    return {
        "cpu": _cpu_info("model name") or platform.processor() or platform.machine(),
        "bfloat16_flags": sorted(cpu_flags() & set(BFLOAT16_CPU_FLAGS)),
        "logical_cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def describe_machine() -> str:
    """One line for a report: CPU model, logical CPUs, memory, Python."""
    machine = machine_description()
    return (
        f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}"
    )
