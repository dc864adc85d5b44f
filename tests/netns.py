"""Run this process in a network namespace of its own, where only loopback exists.

The test suite (tests/conftest.py) and the benches that submit URLs call `isolate()` before
they start anything: from then on this process and every process it starts (daemons,
schemathesis, ffmpeg) can reach 127.0.0.0/8 and ::1 and nothing else. A connection to any
other address fails at once with "network unreachable" and a DNS look-up cannot reach a name
server, so no generated or hostile URL can make the gateway send a packet off the machine.
PostgreSQL is reached through its Unix socket (`PG_SOCKET_DIR`): its TCP port lives in the
namespace we left.

This is `unshare -n` followed by `ip link set lo up`, done inside the process (the unshare(2)
system call and the SIOCSIFFLAGS ioctl), so that `python -m pytest` stays the whole command.
It needs CAP_SYS_ADMIN (root); where that is missing it tries an unprivileged user namespace
(`unshare -rn`), which keeps the same uid and gid inside.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PG_SOCKET_DIR = os.environ.get("TGW_PG_SOCKET_DIR", "/var/run/postgresql")


class NotIsolated(RuntimeError):
    """This process could not be given a network namespace of its own; the message says why."""


def interfaces() -> list[str]:
    """The network interfaces this process sees (in its own namespace; /sys/class/net is not)."""
    return [name for _, name in socket.if_nameindex()]


def is_isolated() -> bool:
    return interfaces() == ["lo"]


def _unshare(flags: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return 0 if libc.unshare(flags) == 0 else ctypes.get_errno()


def _map_ids_to_themselves(uid: int, gid: int) -> None:
    """After an unprivileged CLONE_NEWUSER: be the same uid and gid inside as outside."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def isolate() -> None:
    """Move this process into a fresh network namespace with loopback up (a no-op if it is
    in one already); NotIsolated if the kernel refuses."""
    if is_isolated():
        _loopback_up()
        return
    if threading.active_count() != 1:
        # a namespace is per thread: threads started before would keep the real network
        raise NotIsolated("other threads are already running; isolate() must come first")
    err = _unshare(CLONE_NEWNET)
    if err == errno.EPERM:
        uid, gid = os.getuid(), os.getgid()
        err = _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        if not err:
            _map_ids_to_themselves(uid, gid)
    if err:
        raise NotIsolated(f"unshare(CLONE_NEWNET) failed: {os.strerror(err)} "
                          "(run as root, or enable unprivileged user namespaces)")
    _loopback_up()
    if not is_isolated():
        raise NotIsolated(f"still sees {interfaces()} after unshare")


def pg_admin_url() -> str:
    """The PostgreSQL admin URL for a process in the namespace: the server's Unix socket."""
    return f"postgresql://postgres@/postgres?host={PG_SOCKET_DIR}"
