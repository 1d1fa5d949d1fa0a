"""Ctrl-C stops the test suite at the first press, also while a test trains inside pytest's own
process (where train.run takes SIGINT as "stop after this step" and returns 130)."""
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT

HERE = os.path.dirname(os.path.abspath(__file__))


def test_the_first_ctrl_c_stops_the_suite(tmp_path):
    run, after = tmp_path / "run", tmp_path / "after"
    (tmp_path / "conftest.py").write_text(  # the suite's own conftest, under another module name
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {os.path.join(HERE, 'conftest.py')!r})\n"
        "suite = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(suite)\n"
        "stop_at_the_first_ctrl_c, pytest_configure = suite.stop_at_the_first_ctrl_c, suite.pytest_configure\n")
    (tmp_path / "test_long.py").write_text(
        "import train\n\n"
        "def test_trains_for_long():\n"
        f"    assert train.run(['--out', {str(run)!r}, '--max-steps', '300', '--save-every', '0', '--batch-size', '2'])"
        " == 0\n\n"
        f"def test_after():\n    open({str(after)!r}, 'w').close()\n")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_long.py")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT}, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").exists():  # in the training loop
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        t0 = time.time()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "interrupted (Ctrl-C)" in out, out[-2000:]
    assert not after.exists() and time.time() - t0 < 60  # the next test never ran
    assert any(n.startswith("checkpoint-") for n in os.listdir(run))  # the run itself stopped as it should
