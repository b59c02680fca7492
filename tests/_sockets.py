"""Which addresses a process tree listens on, read from /proc (Linux): for the tests that check
that a local search is reachable from this machine only."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def descendants(root):
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    return tree


def address(hexaddr):
    raw = bytes.fromhex(hexaddr)  # 32-bit words in host (little-endian) order
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def listeners(pids):
    owner = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owner[link[8:-1]] = pid
        except OSError:
            pass
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            hexaddr, port = f[1].split(":")
            # TCP: listening sockets (state 0A); UDP: every bound socket.
            if f[9] in owner and (table.startswith("udp") or f[3] == "0A"):
                pid = owner[f[9]]
                name = Path(f"/proc/{pid}/comm").read_text().strip()
                found.append([table, str(address(hexaddr)), int(port, 16), name])
    return found


def is_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)
