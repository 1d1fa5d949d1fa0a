"""bfloat16 on CPUs that advertise AMX but whose (virtual) machine forbids it: oneDNN picks its
AMX kernels for any bfloat16 matmul, and the process dies with SIGILL, with no message. The cure is
``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` before oneDNN's first kernel runs; but a machine whose AMX
works must keep it, so where the CPU advertises AMX and the variable is unset, a child process tries
one bfloat16 matmul, and only if that dies with SIGILL is the variable set, for this process and
every process it starts (torchrun workers, test subprocesses). train.py and the tests' conftest
call ``guard`` before torch runs a kernel.
"""
import os
import signal
import subprocess
import sys

VARIABLE = "ONEDNN_MAX_CPU_ISA"
SAFE_ISA = "AVX512_CORE_BF16"
DONE = "MMPO_BF16_PROBED"  # set after a probe, so that child processes do not probe again
PROBE = "import torch; a = torch.ones(64, 64, dtype=torch.bfloat16); (a @ a).sum()"


def cpu_advertises_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:  # not Linux: nothing to guard against
        return False


def probe_bf16_matmul() -> int:
    """Exit status of a fresh Python that runs PROBE (negative: killed by a signal)."""
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    try:
        return subprocess.run([sys.executable, "-c", PROBE], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=300).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 0  # could not tell: change nothing


def guard(environ=os.environ, has_amx=cpu_advertises_amx, probe=probe_bf16_matmul) -> str:
    """Set ONEDNN_MAX_CPU_ISA when bfloat16 matmuls would die with SIGILL; returns what it did:
    "set", "kept" (AMX works), or "skipped" (no AMX, the variable is already set, or probed)."""
    if environ.get(VARIABLE) or environ.get(DONE) or not has_amx():
        return "skipped"
    rc = probe()
    environ[DONE] = "1"
    if rc in (-signal.SIGILL, 128 + signal.SIGILL):
        environ[VARIABLE] = SAFE_ISA
        return "set"
    return "kept"
