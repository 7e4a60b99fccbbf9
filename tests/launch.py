"""Two training processes on this machine's CPUs (gloo), as the tests that need several processes start them."""
from __future__ import annotations

import os
import subprocess
import sys


def two_processes(script: str, port: int, **environment: str) -> subprocess.CompletedProcess:
    """Run `script` in 2 processes with torch.distributed.run on `port`; returns the finished process (its
    stderr holds the processes' tracebacks)."""
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', **environment)
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                           '--master_port', str(port), script], capture_output=True, text=True, env=env,
                          timeout=300)
