"""Every refusal that needs no model comes before torch is imported, in well under a second:
train.py, eval.py and ``python -m mmpo.prepare`` on a folder that holds a run or that another
program holds, on missing files, on a released dataset's file given as data, on unknown names."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mmpo import constants, recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# run the program as its command line does, then say whether torch was imported and the exit status
SCRIPT = ("import runpy, sys\nprogram, sys.argv = sys.argv[1], sys.argv[1:]\ntry:\n"
          "    runpy.run_module(program, run_name='__main__') if program.startswith('mmpo.') else "
          "runpy.run_path(program, run_name='__main__')\n"
          "except SystemExit as e:\n    print('torch' in sys.modules, e.code)\n")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("refusals")
    (ws / "run").mkdir()
    (ws / "run" / "config.json").write_text("{}")
    (ws / "busy").mkdir()  # held by this test's process, alive on this host
    (ws / "busy" / ".mmpo.lock").write_text(json.dumps({"program": "train.py", "host": socket.gethostname(),
                                                        "pid": os.getpid()}))
    (ws / "mdpo.json").write_text(json.dumps([{"img_path": "images/a.jpg", "prompt": "Q", "chosen": "a",
                                               "rejected": "b"}]))
    (ws / "d.jsonl").write_text(json.dumps({"image": "a.png", "prompt": "Q?", "chosen": "a", "rejected": "b"}) + "\n")
    (ws / "llava.json").write_text(json.dumps([{"id": "1", "image": "a.jpg", "conversations": []}]))
    footer = b"\x15\x04 schema ds_name question chosen rejected image idx"  # RLAIF-V's columns in the schema
    (ws / "rlaif.parquet").write_bytes(b"PAR1" + b"\0" * 64 + footer + len(footer).to_bytes(4, "little") + b"PAR1")
    symmpo = b"question image_1 image_2 resp_1_w resp_1_l resp_2_w"
    (ws / "symmpo.parquet").write_bytes(b"PAR1" + symmpo + len(symmpo).to_bytes(4, "little") + b"PAR1")
    return ws


BUSY = "{ws}/busy is in use by train.py (pid {pid} on {host}): one run per folder"
CASES = [
    (["train.py", "--out", "{ws}/run"], "--out {ws}/run already holds a run (config.json): --resume {ws}/run"),
    (["train.py", "--out", "{ws}/busy"], BUSY),
    (["train.py", "--resume", "{ws}/nothing"], "--resume {ws}/nothing: no config.json there, nothing to resume"),
    (["train.py", "--objective", "mdp"], "--objective mdp: unknown; choose one of dpo, mdpo, mfpo, napo, symmpo, sft"),
    (["train.py", "--data", "{ws}/none.jsonl"], "--data {ws}/none.jsonl: no such file"),
    (["train.py", "--eval-data", "{ws}/none.jsonl"], "--eval-data {ws}/none.jsonl: no such file"),
    (["train.py", "--model", "./no-model"], "--model ./no-model: no such directory"),
    (["train.py", "--data", "{ws}/rlaif.parquet"], "--data {ws}/rlaif.parquet: a parquet file, expected JSON Lines; "
                                                   "convert it first: python -m mmpo.convert rlaif-v {ws}/rlaif.parquet OUT"),
    (["train.py", "--data", "{ws}/symmpo.parquet"], "convert it first: python -m mmpo.convert symmpo "),
    (["train.py", "--data", "{ws}/mdpo.json"], "--data {ws}/mdpo.json: a JSON array, expected JSON Lines (one JSON object "
                                               "per line); convert it first: python -m mmpo.convert mdpo {ws}/mdpo.json OUT"),
    (["train.py", "--data", "{ws}/llava.json"], "convert it first: python -m mmpo.convert llava "),
    (["eval.py", "--data", "{ws}/none.jsonl"], "--data {ws}/none.jsonl: no such file"),
    (["eval.py", "--bench", "chair", "{ws}/none.jsonl"], "--bench chair {ws}/none.jsonl: no such file"),
    (["eval.py", "--data", "{ws}/mdpo.json", "--out", "{ws}/busy"], BUSY),
    (["mmpo.prepare", "napo", "--data", "{ws}/none.jsonl"], "--data {ws}/none.jsonl: no such file"),
    (["mmpo.prepare", "symmpo", "--data", "{ws}/symmpo.parquet"], "convert it first: python -m mmpo.convert symmpo"),
    (["mmpo.prepare", "mfpo", "--data", "{ws}/mdpo.json", "--out", "{ws}/busy"], BUSY),
    (["mmpo.prepare", "napo", "--data", "{ws}/d.jsonl", "--model", "./no-model"], "--model ./no-model: no such directory"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_refusals_come_before_torch_in_under_a_second(ws, args, message):
    args = [a.format(ws=ws) for a in args]
    if "--out" not in args and not any(a.startswith("--resume") for a in args):
        args += ["--out", str(ws / "new")]
    if args[0] == "mmpo.prepare" and "--model" not in args:
        args += ["--model", "tiny-llava"]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    seconds = time.perf_counter() - t0
    assert r.stdout.strip().splitlines()[-1] == "False 2", r.stdout + r.stderr  # torch never imported, exit 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr  # one line
    assert message.format(ws=ws, pid=os.getpid(), host=socket.gethostname()) in r.stderr
    assert seconds < 1.0, f"{seconds:.2f} s"
    assert not (ws / "new").exists()  # nothing written


def test_the_objective_names_checked_before_torch_are_the_recipes():
    assert constants.OBJECTIVE_NAMES == tuple(recipes.OBJECTIVES)


def test_a_parquet_file_written_by_pyarrow_is_known_by_its_columns(tmp_path):
    """The schema as pyarrow writes it (the footer the check reads), for each released layout."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from mmpo.rows import DataError, check_file
    layouts = {"rlaif-v": ["ds_name", "image", "question", "chosen", "rejected", "idx"],
               "rlhf-v": ["ds_name", "image", "text", "idx"],
               "napo": ["ds_name", "image", "question", "chosen", "rejected", "question_only", "image_only"],
               "symmpo": ["question", "image_1", "image_2", "resp_1_w", "resp_1_l", "resp_2_w"],
               "trl": ["images", "prompt", "chosen", "rejected"]}
    for name, columns in layouts.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({c: ["x"] for c in columns}), path)
        with pytest.raises(DataError) as e:
            check_file(str(path), "--data")
        assert str(e.value).endswith(f"convert it first: python -m mmpo.convert {name} {path} OUT"), name
