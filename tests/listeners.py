"""What a tree of processes listens on, read from /proc (Linux), and what answers there
without a token: the probe of the listener tests."""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    pid: int
    command: str  # the owner's command line, spaces for NULs

    @property
    def loopback(self) -> bool:
        address = ipaddress.ip_address(self.address)
        mapped = getattr(address, "ipv4_mapped", None)
        return (mapped or address).is_loopback


def process_tree(roots: set[int]) -> set[int]:
    """``roots`` and every descendant of them alive now."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += children.get(pid, [])
    return tree


def pids_with_environment(marker: str) -> set[int]:
    """Processes of this user whose environment holds ``marker`` (``NAME=value``)."""
    found = set()
    for entry in PROC.iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def listeners(pids: set[int]) -> list[Listener]:
    """The TCP sockets in LISTEN state owned by ``pids``."""
    owners: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in (PROC / str(pid) / "fd").iterdir():
                try:
                    link = os.readlink(fd)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    owners[link[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in (PROC / "net" / table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owners:  # 0A: LISTEN
                continue
            pid = owners[fields[9]]
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(
                struct.pack("<I", int.from_bytes(raw[i : i + 4], "big")) for i in range(0, len(raw), 4)
            )
            command = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(Listener(socket.inet_ntop(family, raw), int(port, 16), pid, command))
    return found


def answers_without_token(listener: Listener) -> tuple[int, str, bytes] | None:
    """(status, content type, first bytes) of ``GET /metrics`` sent with no token, when
    the listener speaks HTTP and answers 200; None when it refuses (401, 403, …) or is no
    HTTP server (gRPC)."""
    url = f"http://127.0.0.1:{listener.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read(4096)
    except (OSError, http.client.HTTPException):  # 401 and co. (URLError), gRPC's bytes
        return None
