"""Shared by the benchmark scripts: CPU seconds and memory of a server's process tree, read from Linux /proc (no
psutil needed), by role. Ray titles its processes: ``ray::ServeReplica:<app>:<deployment>`` is a replica
(``replica:<deployment>``), ``ray::ProxyActor`` the HTTP/gRPC proxy (``proxy``), ``ray::ServeController`` the
controller; other ``ray::`` workers are ``ray_other``; vLLM's engine processes (``VLLM::EngineCore``,
``VLLM::Worker``) are ``generator_engine``, and raylet, GCS and dashboard agents are ``ray_system``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["tree_cpu", "tree_rss_mb", "cpu_delta"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _proc_table() -> dict[int, tuple[int, float, int, str]]:
    """pid → (ppid, cpu seconds, rss bytes, cmdline) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        ppid, utime, stime, rss_pages = int(rest[1]), int(rest[11]), int(rest[12]), int(rest[21])
        table[int(entry)] = (ppid, (utime + stime) / _TICK, rss_pages * _PAGE, cmd)
    return table


def _role(cmd: str) -> str:
    """A process's role from its title. Ray appends the method a worker is running
    (``ray::ServeReplica:switchboard:ingress.handle_request_with_rejection``), so that part is dropped: a
    process keeps one role whatever it is doing."""
    title = cmd.split(" ", 1)[0]
    if title.startswith("VLLM::"):  # the suggested-reply engine: work, not Ray's overhead
        return "generator_engine"
    if not title.startswith("ray::"):
        return "ray_system"
    name = title[5:].split(".", 1)[0]
    if name.startswith("ServeReplica:"):
        return "replica:" + name.rsplit(":", 1)[-1]
    return {"ProxyActor": "proxy", "ServeController": "controller"}.get(name, "ray_other")


def _tree(root: int, include_root: bool) -> list[tuple[float, int, str]]:
    """(cpu seconds, rss bytes, cmdline) of ``root``'s descendants (and ``root`` itself with ``include_root``)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    out = []
    stack = [root] if include_root else list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid in table:
            _, cpu, rss, cmd = table[pid]
            out.append((cpu, rss, cmd))
            stack.extend(children.get(pid, []))
    return out


def tree_cpu(root: int, *, include_root: bool = True) -> dict[str, float]:
    """CPU seconds of ``root``'s process tree: ``total`` and one key per role (see the module docstring)."""
    out: dict[str, float] = {"total": 0.0}
    for cpu, _, cmd in _tree(root, include_root):
        out["total"] += cpu
        role = _role(cmd)
        out[role] = out.get(role, 0.0) + cpu
    return out


def tree_rss_mb(root: int, *, include_root: bool = True) -> float:
    return sum(rss for _, rss, _ in _tree(root, include_root)) / 2**20


def cpu_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """CPU seconds per key between two ``tree_cpu`` readings."""
    if before is None or after is None:
        return None
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}
