"""Which errors count as a lost peer, and what guard_peer_failure prints and returns."""
import subprocess
import sys

from motionmae_ds.runtime.failure import is_peer_failure, peer_failure_message
from tests.helpers import REPO, run_env

# verbatim from the gloo runs in test_rank_failure.py
RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:54921: "
         "Connection reset by peer. This is typically caused by a remote worker hanging")
TIMEOUT = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
           "60000ms for recv operation to complete")


def test_peer_errors_are_recognised():
    assert is_peer_failure(RuntimeError(RESET)) and is_peer_failure(RuntimeError(TIMEOUT))
    assert not is_peer_failure(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_peer_failure(ValueError(RESET))


def test_message_names_rank_and_cause(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "32")
    msg = peer_failure_message(RuntimeError(RESET))
    assert msg.startswith("error: rank 3/32 on ") and "\n" not in msg
    assert "(Read error [127.0.0.1]:54921: Connection reset by peer)" in msg
    assert "Timed out waiting 60000ms for recv operation to complete)" in peer_failure_message(RuntimeError(TIMEOUT))


def _guarded(body: str) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom motionmae_ds.runtime.failure import guard_peer_failure\n"
            f"def main():\n    {body}\nsys.exit(guard_peer_failure(main))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(run_env(), RANK="1", WORLD_SIZE="2"),
                          capture_output=True, text=True, timeout=60)


def test_guard_exit_codes():
    lost = _guarded(f"raise RuntimeError({RESET!r})")
    lines = [line for line in lost.stderr.splitlines() if line.strip()]
    assert lost.returncode == 5 and len(lines) == 1 and lines[0].startswith("error: rank 1/2 on "), lost.stderr
    other = _guarded("raise KeyError('boom')")
    assert other.returncode == 1 and "Traceback" in other.stderr and "KeyError: 'boom'" in other.stderr
    assert _guarded("return 3").returncode == 3
