"""bf16 on CPUs that advertise AMX but die with SIGILL: ONEDNN_MAX_CPU_ISA only when needed."""
import os
import signal
import subprocess
import sys

from mmpo.cpu_bf16 import DONE, SAFE_ISA, VARIABLE, cpu_advertises_amx, guard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def decide(has_amx, rc, environ=None):
    env, probes = dict(environ or {}), []

    def probe():
        probes.append(1)
        return rc
    return guard(env, lambda: has_amx, probe), env, len(probes)


def test_sigill_sets_the_safe_isa_for_this_and_child_processes():
    for rc in (-signal.SIGILL, 128 + signal.SIGILL):  # killed by the signal, or a shell's 132
        did, env, probes = decide(True, rc)
        assert did == "set" and env[VARIABLE] == SAFE_ISA and env[DONE] == "1" and probes == 1


def test_a_machine_whose_amx_works_keeps_it():
    did, env, probes = decide(True, 0)
    assert did == "kept" and VARIABLE not in env and probes == 1
    assert decide(True, 1)[0] == "kept"  # another failure is not SIGILL: not ours to hide


def test_no_probe_without_amx_with_the_variable_set_or_already_probed():
    assert decide(False, -signal.SIGILL)[::2] == ("skipped", 0)
    assert decide(True, -signal.SIGILL, {VARIABLE: "AVX2"})[::2] == ("skipped", 0)  # the user's choice stands
    did, env, probes = decide(True, -signal.SIGILL, {DONE: "1"})
    assert (did, probes) == ("skipped", 0) and VARIABLE not in env


def test_amx_flag_is_read_from_cpuinfo(tmp_path):
    (tmp_path / "amx").write_text("processor : 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile amx_int8\n")
    (tmp_path / "plain").write_text("processor : 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    assert cpu_advertises_amx(str(tmp_path / "amx"))
    assert not cpu_advertises_amx(str(tmp_path / "plain"))
    assert not cpu_advertises_amx(str(tmp_path / "missing"))


def test_import_mmpo_only_imports():
    """``import mmpo`` loads no torch, probes nothing and sets no variable: the guard is called
    explicitly, by the programs that run bf16 (train.py, the bench) and by the tests."""
    env = {k: v for k, v in os.environ.items() if k not in (VARIABLE, DONE)}
    code = "import os, sys, mmpo; print('torch' in sys.modules, os.environ.get('%s'), os.environ.get('%s'))" % (VARIABLE, DONE)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None", "None"]


def test_bf16_matmul_after_the_guard_with_no_variable_set_by_hand():
    """On this machine, whatever its CPU: a fresh process with ONEDNN_MAX_CPU_ISA unset calls the
    guard as train.py does, then runs bf16 matmuls and exits 0 (on an AMX-forbidding VM it died
    with SIGILL)."""
    env = {k: v for k, v in os.environ.items() if k not in (VARIABLE, DONE)}
    code = ("from mmpo import cpu_bf16; cpu_bf16.guard(); import torch; a = torch.randn(128, 128).bfloat16(); "
            "print(float((a @ a).float().sum()), float(torch.nn.functional.linear(a, a).float().sum()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 2
