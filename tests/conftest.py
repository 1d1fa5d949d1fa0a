import inspect
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# first: on a CPU whose AMX kernels die with SIGILL this sets ONEDNN_MAX_CPU_ISA for the whole
# session and every subprocess (torchrun workers) before torch runs a bf16 kernel
from mmpo import cpu_bf16  # noqa: E402

cpu_bf16.guard()
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mmpo.synthetic import make_synthetic  # noqa: E402

torch.set_num_threads(2)

import signal  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "sends_signals: the test signals its own process (not a Ctrl-C)")


@pytest.fixture(autouse=True)
def stop_at_the_first_ctrl_c(request, monkeypatch):
    """Ctrl-C stops the suite at the first press. A training run inside the test process
    (train.run) takes SIGINT as "stop after this step" and returns 130, so the test would merely
    fail and the suite go on: every SIGINT handler a test installs is wrapped to note the signal,
    and a noted one ends the session after this test."""
    if request.node.get_closest_marker("sends_signals"):
        yield
        return
    noted, real = [], signal.signal

    def noting(signum, handler):
        if signum == signal.SIGINT and callable(handler) and handler is not signal.default_int_handler:
            inner = handler
            def handler(s, frame):  # noqa: E306
                noted.append(s)
                return inner(s, frame)
        return real(signum, handler)
    monkeypatch.setattr(signal, "signal", noting)
    yield
    if noted:
        pytest.exit("interrupted (Ctrl-C)", returncode=130)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """16 examples of the built-in synthetic dataset (every optional field present)."""
    return make_synthetic(str(tmp_path_factory.mktemp("synthetic")), n=16, seed=0)


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture
def image_dir(tmp_path):
    """A few small images of different colors in tmp_path/img."""
    d = tmp_path / "img"
    d.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        Image.new("RGB", (32, 32), color).save(d / f"{i}.png")
    return d


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory):
    """An easy dataset: the chosen and rejected answers differ the same way everywhere, so
    every objective's reward accuracy climbs within a few steps."""
    d = tmp_path_factory.mktemp("easy")
    rows = []
    for i in range(32):
        Image.new("RGB", (32, 32), (20 * (i % 8), 100, 200)).save(d / f"{i}.png")
        Image.new("RGB", (32, 32), (200, 20 * (i % 8), 30)).save(d / f"c{i}.png")
        rows.append({"id": f"e{i}", "image": f"{i}.png", "prompt": "Describe it.", "chosen": "A blue picture.",
                     "rejected": "zzz qqq", "contrast_image": f"c{i}.png", "contrast_chosen": "A red picture.",
                     "lang_biased": "xxx yyy", "vision_biased": "www vvv"})
    return write_jsonl(d / "data.jsonl", rows)


def metrics(out):
    """The rows of OUT/metrics.jsonl."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_killed_after(step, argv):
    """Run train.py with ``argv`` and kill it as a crash would, right after its checkpoint of
    ``step`` is written (the next step is never taken)."""
    import train
    from killing import killed_after_checkpoint
    with killed_after_checkpoint(step):  # cli.run reports the interruption in one line: status 130
        assert train.run([str(x) for x in argv]) == 130


def assert_identical_runs(straight, resumed, steps):
    """Every logged number of the two runs is equal, bit for bit, except wall-clock rates."""
    a, b = metrics(straight), metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, steps + 1))
    timing = ("samples_per_s", "tokens_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == \
           [{k: v for k, v in r.items() if k not in timing} for r in b]


def lift_names(fn) -> list[str]:
    """What ``fn``'s docstring says a copy of it needs: the ``names`` of its "Lifting it" paragraph."""
    doc = inspect.getdoc(fn)
    assert "Lifting it:" in doc, f"{fn.__name__}: no 'Lifting it:' in its docstring"
    return re.findall(r"``(\w+)``", doc[doc.index("Lifting it:"):].split("\n\n")[0])


def lifted(fn, names):
    """``fn`` re-created from source text in a namespace holding only ``names`` (modules and
    constants as they are, functions from their source): what a reader gets by copying it."""
    module = sys.modules[fn.__module__]
    space = {n: getattr(module, n) for n in names if not inspect.isfunction(getattr(module, n))}
    for obj in [getattr(module, n) for n in names if inspect.isfunction(getattr(module, n))] + [fn]:
        exec(compile(inspect.getsource(obj), f"<copied {obj.__name__}>", "exec"), space)
    return space[fn.__name__]


def check_lift(fn, exercise):
    """A copy with exactly the names of its docstring computes what ``fn`` does (``exercise``: the
    function -> a list of results), and a copy without any one of them fails: the list is complete
    and holds nothing a copy does not need."""
    names = lift_names(fn)
    for got, want in zip(exercise(lifted(fn, names)), exercise(fn), strict=True):
        assert torch.equal(torch.as_tensor(got), torch.as_tensor(want))
    for name in names:
        with pytest.raises(NameError):
            exercise(lifted(fn, [n for n in names if n != name]))
