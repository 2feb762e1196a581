"""Resource limits for one sandboxed run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    """Limits applied to everything a sandboxed command starts.

    ``timeout_s`` is wall-clock (the whole process tree is killed when it runs out);
    ``cpu_s``, ``memory_mb`` (address space), ``file_size_mb`` and ``max_procs`` are
    rlimits; ``max_output_bytes`` caps stdout+stderr together, after which the run is
    killed. ``max_procs`` counts every process of the sandbox's uid, so it is only
    meaningful when the sandbox runs as a dedicated unprivileged uid (the default
    when the orchestrator is root). ``total_memory_mb`` caps the whole run (all its
    processes, and the files in its ``/tmp`` and ``/dev/shm``) where the bubblewrap
    sandbox has a cgroup per run (``sandbox/cgroups.py``), which also caps the run's
    processes and threads at ``max_procs`` whatever its uid.
    """

    timeout_s: float = 120
    cpu_s: int = 120
    memory_mb: int = 2048
    file_size_mb: int = 64
    max_procs: int = 128
    max_output_bytes: int = 1_000_000
    total_memory_mb: int = 4096

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "max_procs", "max_output_bytes", "total_memory_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive")
