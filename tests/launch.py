"""Two-process gloo runs for the DDP tests, launched with torchrun on this machine's loopback.

A launch can fail for reasons outside the code under test (torchrun picks free ports by binding,
closing and binding again, so another process on a busy machine can take one in between), so a failed
launch is retried once, and the first failure's stderr is kept as a warning that the test log shows.
A broken implementation fails both tries, and the test fails with the workers' stderr."""
import os
import subprocess
import sys
import warnings


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
        if proc.returncode == 0 or attempt:
            break
        warnings.warn(f"torchrun exited with {proc.returncode} on the first try (retried once):\n"
                      f"{proc.stderr[-4000:]}", RuntimeWarning)
    assert proc.returncode == 0, f"torchrun exited with {proc.returncode} twice; the second time:\n{proc.stderr[-6000:]}"
    return proc
