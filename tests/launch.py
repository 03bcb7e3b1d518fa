"""Two-process gloo runs for the DDP tests, launched with torchrun on this machine's loopback.

torchrun picks free ports by binding, closing and binding again, so another process on a busy machine
can take a port in between (EADDRINUSE); such a failure of the launcher says nothing about the code
under test, so it is retried once. Any other failure fails the test with the workers' stderr."""
import os
import subprocess
import sys

# failures of the machine's sockets, not of the code under test
LAUNCH_ERRORS = ("EADDRINUSE", "Address already in use", "RendezvousConnectionError", "connectFullMesh")


def torchrun(args: list[str], *, env: dict | None = None, cwd=None, timeout: int = 600, nproc: int = 2):
    """Run ``torchrun --standalone --nproc_per_node nproc ARGS`` with one thread per process on the
    loopback interface; returns the completed process, asserting exit status 0 (stderr in the message)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if sys.platform == "linux":  # gloo's default device follows the hostname, which need not resolve locally
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--local-addr", "127.0.0.1", *args]
    for attempt in range(2):
        proc = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, capture_output=True, text=True)
        if proc.returncode == 0 or attempt or not any(e in proc.stderr for e in LAUNCH_ERRORS):
            break
    assert proc.returncode == 0, f"torchrun exited with {proc.returncode}:\n{proc.stderr[-6000:]}"
    return proc
