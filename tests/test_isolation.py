"""The suite runs where only loopback exists (tests/netns.py, set up by conftest before anything
starts): a connection beyond loopback is unreachable, in this process and in every process a test
starts, and a DNS look-up of a public name fails without a name server being reached. Nothing
here can leave the machine: the namespace has no interface but `lo`, so the kernel refuses
these connections before a packet exists."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import netns

pytestmark = pytest.mark.needs_netns

BEYOND = [("100.64.0.1", 80, socket.AF_INET), ("2001:db8::1", 80, socket.AF_INET6)]


def test_only_loopback_exists():
    assert netns.interfaces() == ["lo"]


@pytest.mark.parametrize("host,port,family", BEYOND)
def test_a_connection_beyond_loopback_is_unreachable(host, port, family):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        with pytest.raises(OSError) as err:
            s.connect((host, port))
    assert err.value.errno == errno.ENETUNREACH, err.value


def test_a_process_the_suite_starts_is_in_the_namespace_too():
    code = ("import socket\ntry:\n    socket.create_connection(('100.64.0.1', 80), timeout=5)\n"
            "except OSError as e:\n    print(e.errno, [n for _, n in socket.if_nameindex()])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
    assert out.split(" ", 1) == [str(errno.ENETUNREACH), "['lo']\n"]


def name_servers() -> list[str]:
    path = Path("/etc/resolv.conf")
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split()[1] for line in lines if line.startswith("nameserver") and len(line.split()) > 1]


def test_a_dns_look_up_of_a_public_name_fails_on_the_machine():
    for server in name_servers():
        if server.startswith("127.") or server == "::1":
            continue  # a loopback resolver of the machine's namespace is not in this one
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s, pytest.raises(OSError) as err:
            s.connect((server, 53))  # where a look-up would be sent: no route from here
        assert err.value.errno == errno.ENETUNREACH, (server, err.value)
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.com", 443, type=socket.SOCK_STREAM)


def test_loopback_works():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert {info[4][0] for info in socket.getaddrinfo("localhost", 80)} <= {"127.0.0.1", "::1"}
