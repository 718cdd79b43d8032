"""tests/helpers.free_port: the master ports of the runs tests start. Each is below the kernel's ephemeral range, held
by one test at a time across every test process of the machine, and bindable when handed out."""
import socket
import subprocess
import sys

from tests import helpers
from tests.helpers import REPO, free_port, release_ports

# another test process (an xdist worker): the ports it takes while this one holds its own
OTHER = """
import sys
sys.path.insert(0, sys.argv[1])
from tests import helpers
if len(sys.argv) > 3:  # only this one port to choose from
    helpers._port_range = lambda: (int(sys.argv[3]), int(sys.argv[3]) + 1)
try:
    print(" ".join(str(helpers.free_port()) for _ in range(int(sys.argv[2]))))
except RuntimeError as e:
    print(e)
"""


def _other_process(n, only=None):
    return subprocess.run([sys.executable, "-c", OTHER, str(REPO), str(n), *([str(only)] if only else [])],
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def _other_process_ports(n):
    return {int(p) for p in _other_process(n).split()}


def test_held_ports_are_not_handed_out_twice_and_come_back_when_released():
    low, high = helpers._port_range()
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        assert high <= int(f.read().split()[0])  # no outgoing connection is given one by chance
    mine = {free_port() for _ in range(40)}
    assert len(mine) == 40 and all(low <= p < high for p in mine)
    theirs = _other_process_ports(200)
    assert len(theirs) == 200 and not mine & theirs
    port = min(mine)
    assert _other_process(1, only=port).startswith(f"no free port in [{port}, {port + 1})")  # held here
    release_ports()
    assert not helpers._held_ports
    assert _other_process(1, only=port) == str(port)  # released: the other process gets it


def test_a_port_in_use_outside_the_tests_is_skipped(monkeypatch):
    low, _ = helpers._port_range()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        # a one-port range holding only the busy port: nothing to give
        monkeypatch.setattr(helpers, "_port_range", lambda: (taken, taken + 1))
        try:
            free_port()
        except RuntimeError as e:
            assert f"no free port in [{taken}, {taken + 1})" in str(e)
        else:
            raise AssertionError("a bound port was handed out")
    # once it is free again, it is the one handed out
    assert free_port() == taken
    release_ports()
