"""Every mistake with eval.py is one line on stderr and exit status 2, never a traceback: an
option out of range, a checkpoint that is no train.py output, a --model that is no model, an
output folder that cannot be written, data that is no JSONL text. Each runs `python eval.py` as a
user would. Mistakes in the command line answer before torch is imported."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, write_jsonl


def eval_py(*args, env=None):
    """`python ARGS` in the checkout, stdout and stderr as written (text=True would turn the \r
    of a progress bar into a line break)."""
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, timeout=300, env=env)
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    return r


def error_line(r) -> str:
    """The one line on stderr, as a terminal shows it (progress bars redraw their line with \\r)."""
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = [shown for line in r.stderr.split("\n") if (shown := line.rsplit("\r", 1)[-1].strip())]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture
def ws(tmp_path, image_dir):
    """A folder of things to get wrong, beside valid data (tmp_path/data.jsonl, two rows)."""
    write_jsonl(tmp_path / "data.jsonl", [{"id": str(i), "image": f"img/{i}.png", "prompt": "Q?", "chosen": "A dog.",
                                           "rejected": "A cat."} for i in range(2)])
    write_jsonl(tmp_path / "pope.jsonl", [{"image": "img/0.png", "question": "Dog?", "answer": "no"}])

    def folder(name, files):
        (tmp_path / name).mkdir()
        for file, text in files.items():
            (tmp_path / name / file).write_text(text if isinstance(text, str) else json.dumps(text))
    adapter = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": []}
    # a run killed before its end: train.py's config.json and checkpoints, no final/
    folder("killed", {"config.json": {"objective": "dpo", "model": "tiny-llava", "lora_rank": 8, "seed": 0},
                      "latest": "checkpoint-2"})
    folder("full-checkpoint", {"trainable.safetensors": "", "trainer_state.json": {"step": 2}})
    folder("empty", {})
    folder("moved-base", {"adapter_config.json": {**adapter, "base_model_name_or_path": "/gone/base_model"},
                          "adapter_model.safetensors": ""})
    folder("broken", {"adapter_config.json": "{not json", "adapter_model.safetensors": ""})
    folder("no-weights", {"adapter_config.json": {**adapter, "base_model_name_or_path": "tiny-llava"}})
    folder("no-base", {"adapter_config.json": {**adapter, "base_model_name_or_path": ""},
                       "adapter_model.safetensors": ""})
    folder("adapter", {"adapter_config.json": {**adapter, "base_model_name_or_path": "tiny-llava"},
                       "adapter_model.safetensors": ""})
    folder("not-a-model", {"weights.bin": ""})
    folder("no-model-type", {"config.json": {"architectures": []}})
    folder("jsonl-folder", {"data.jsonl": ""})
    (tmp_path / "a-file.txt").write_text("x")
    (tmp_path / "other").mkdir()
    write_jsonl(tmp_path / "other" / "pope.jsonl", [{"image": "../img/0.png", "question": "Dog?", "answer": "no"}])
    return tmp_path


D = "--data", "{ws}/data.jsonl"
TINY = "--model", "tiny-llava"

# (arguments, the error line); "{ws}" is the folder above, a line ending in "..." a prefix
COMMAND_LINE = [
    ([*TINY, *D, "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    ([*TINY, *D, "--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
    ([*TINY, *D, "--num-beams", "0"], "--num-beams 0: must be at least 1 (1: greedy)"),
    ([*TINY, *D, "--beta", "0"], "--beta 0.0: must be a positive number"),
    ([*TINY, *D, "--beta", "nan"], "--beta nan: must be a positive number"),
    ([*TINY, *D, "--max-length", "1"], "--max-length 1: must be at least 2"),
    ([*TINY, *D, "--logps-chunk", "-1"], "--logps-chunk -1: must be 0 (off) or more"),
    ([*TINY, *D, "--batch-size", "two"], "argument --batch-size: invalid int value: 'two'"),
    ([*TINY, *D, "--pope-parse", "loose"], "argument --pope-parse: invalid choice: 'loose'..."),
    ([*TINY, *D, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ([*TINY], "nothing to evaluate: give --data and/or --bench"),
    ([*TINY, "--bench", "nope", "x"], "--bench nope: unknown benchmark, choose chair, pope, qa or amber"),
    ([*TINY, "--bench", "pope", "{ws}/pope.jsonl", "--bench", "pope", "{ws}/other/pope.jsonl"],
     "two --bench files share a name: ['pope-pope', 'pope-pope']; give them distinct file names"),
    ([*TINY, *D, "--no-base"], "no model to evaluate: give --checkpoint, or --model without --no-base"),
    # checkpoints
    (["--checkpoint", "{ws}/nope", *D], "--checkpoint {ws}/nope: no such directory"),
    (["--checkpoint", "{ws}/a-file.txt", *D], "--checkpoint {ws}/a-file.txt: a file, not a train.py output directory"),
    (["--checkpoint", "{ws}/empty", *D], "--checkpoint {ws}/empty: neither a train.py output nor a model directory "
                                         "(no final/, adapter_config.json or config.json)"),
    (["--checkpoint", "{ws}/killed", *D], "--checkpoint {ws}/killed: a train.py run with no final/ yet (still "
                                          "training, or stopped early); its latest adapters: --checkpoint "
                                          "{ws}/killed/checkpoint-2"),
    (["--checkpoint", "{ws}/full-checkpoint", *D], "--checkpoint {ws}/full-checkpoint: a full fine-tuning checkpoint, "
                                                   "kept for resuming training; evaluate the run's final/"),
    (["--checkpoint", "{ws}/moved-base", *D], "--checkpoint {ws}/moved-base: its base model /gone/base_model (named in "
                                              "{ws}/moved-base/adapter_config.json) is not there"),
    (["--checkpoint", "{ws}/broken", *D], "{ws}/broken/adapter_config.json: cannot read it as JSON (Expecting property "
                                          "name enclosed in double quotes: line 1 column 2 (char 1))"),
    (["--checkpoint", "{ws}/no-weights", *D], "--checkpoint {ws}/no-weights: {ws}/no-weights/adapter_config.json "
                                              "without the adapter weights (adapter_model.safetensors)"),
    (["--checkpoint", "{ws}/no-base", *D], "--checkpoint {ws}/no-base: records no base model, which its adapters "
                                           "need: give --model BASE"),
    (["--checkpoint", "{ws}/adapter", "{ws}/adapter", *D],
     "two columns share a name: ['base', 'adapter', 'adapter']; give the checkpoints distinct directory names"),
    # base models: a path is never tried as a hub id
    (["--model", "./no-such-dir", *D], "--model ./no-such-dir: no such directory"),
    (["--model", "no/such/dir", *D], "--model no/such/dir: no such directory"),
    (["--model", "", *D], "--model is empty"),
    (["--model", "{ws}/killed", *D], "--model {ws}/killed: a train.py run, not a base model; give it as "
                                     "--checkpoint {ws}/killed"),
    (["--model", "{ws}/not-a-model", *D], "--model {ws}/not-a-model: not a model directory (no config.json)"),
    (["--model", "{ws}/no-model-type", *D], "--model {ws}/no-model-type: not a model directory (its config.json has "
                                            "no model_type)"),
    (["--model", "org\\model", *D], "--model org\\model: no such directory"),
    # the output folder
    ([*TINY, *D, "--out", "{ws}/a-file.txt"], "--out {ws}/a-file.txt: a file, not a folder"),
    ([*TINY, *D, "--out", "{ws}/a-file.txt/eval"], "--out {ws}/a-file.txt/eval: {ws}/a-file.txt is a file, not a folder"),
]
if importlib.util.find_spec("matplotlib") is None:
    COMMAND_LINE.append(([*TINY, *D, "--plot"], "--plot needs matplotlib, which is not installed: pip install matplotlib"))


def matches(line: str, expected: str, ws) -> bool:
    expected = "error: " + expected.replace("{ws}", str(ws))
    return line.startswith(expected[:-3]) if expected.endswith("...") else line == expected


@pytest.mark.parametrize("args, line", COMMAND_LINE, ids=[line[:50] for _, line in COMMAND_LINE])
def test_command_line_mistakes(ws, args, line):
    argv = [a.replace("{ws}", str(ws)) for a in args]
    r = eval_py("eval.py", *argv, *([] if "--out" in argv else ["--out", ws / "out"]))
    got = error_line(r)
    assert matches(got, line, ws), got
    assert "Repo id" not in r.stderr
    assert not (ws / "out").exists()  # nothing written


def test_a_command_line_mistake_answers_before_torch_is_imported(ws):
    r = eval_py("-X", "importtime", "eval.py", "--bench", "nope", "x")
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "transformers" not in imported
    assert r.returncode == 2
    assert [line for line in r.stderr.splitlines() if not line.startswith("import time:")] == \
        ["error: --bench nope: unknown benchmark, choose chair, pope, qa or amber"]


def test_a_folder_in_use_is_refused_before_any_model_loads(ws):
    """One run per folder: eval.py into a folder that a live run holds (its lock refreshed now)."""
    (ws / "busy").mkdir()
    (ws / "busy" / ".mmpo.lock").write_text(json.dumps({"program": "train.py", "host": "elsewhere", "pid": 7}))
    r = eval_py("eval.py", *TINY, "--data", ws / "data.jsonl", "--out", ws / "busy")
    assert error_line(r) == (f"error: {ws}/busy is in use by train.py (pid 7 on elsewhere): one run per folder; "
                             "wait for it, or choose another folder")
    assert os.listdir(ws / "busy") == [".mmpo.lock"] and "== " not in r.stdout  # nothing written, no model evaluated


# (arguments, the error line): found when the data is read or a model is loaded
DATA = [
    ([*TINY, "--data", "{ws}/jsonl-folder"], "--data {ws}/jsonl-folder: is a folder, expected a JSONL file (did you "
                                             "mean {ws}/jsonl-folder/data.jsonl?)"),
    ([*TINY, "--data", "{ws}/latin1.jsonl"], "{ws}/latin1.jsonl:1: not UTF-8 text (byte 0xE9 at column 54)"),
    ([*TINY, "--bench", "pope", "{ws}/jsonl-folder"], "{ws}/jsonl-folder: is a folder, expected a JSONL file (did you "
                                                      "mean {ws}/jsonl-folder/data.jsonl?)"),
    ([*TINY, "--bench", "chair", "{ws}/chair.jsonl"], "--bench chair {ws}/chair.jsonl: no such file"),
    # an example whose prompt and image alone fill --max-length cannot be scored (nor left out of one column only)
    ([*TINY, *D, "--max-length", "20"], "{ws}/data.jsonl:1: prompt and image take ..."),
]


@pytest.mark.parametrize("args, line", DATA, ids=["data folder", "data not utf-8", "bench folder", "bench missing",
                                                  "over-long"])
def test_data_mistakes(ws, args, line):
    # "Café" saved as Latin-1, as an old editor would: é is the byte 0xE9, the line's 54th character
    (ws / "latin1.jsonl").write_bytes(b'{"image": "img/0.png", "prompt": "Q?", "chosen": "Caf\xe9", "rejected": "x"}\n')
    r = eval_py("eval.py", *[a.replace("{ws}", str(ws)) for a in args], "--out", ws / "out")
    got = error_line(r)
    assert matches(got, line, ws), got
    if line.endswith("take ..."):
        assert got.endswith("max_length is 20: too long to score; raise --max-length")


def test_qa_rows_every_problem_one_line(ws):
    """A QA file's every problem at once, one line each, before any model is loaded."""
    ok = {"image": "img/0.png", "question": "What color is the circle?", "answer": "blue"}
    colors = ["red", "green", "blue"]
    write_jsonl(ws / "qa.jsonl", [
        {**ok, "options": colors, "group": "counter-prior", "prior": "red"},  # 1: right
        {"image": "img/0.png", "question": "What color is the circle?"},  # 2: no answer
        {**ok, "answer": 3},
        {**ok, "options": "red, green, blue"},  # 4: not a list
        {**ok, "options": ["red", ""]},  # 5: a blank option (and so no answer among them)
        {**ok, "options": ["red", "green"]},  # 6: not the answer
        {**ok, "options": ["blue", "Red", "red ", "blue"]},  # 7: read alike, and twice
        {**ok, "group": 3},
        {**ok, "group": ""},
        {**ok, "options": colors, "prior": "purple"},  # 10: not among the options
        {**ok, "prior": ["red"]},
        {**ok, "prior": "purple"},  # 12: right: without options any prior goes
        {"image": "img/0.png", "answer": "blue", "group": None, "options": None, "prior": None},  # 13: no question
    ])
    r = eval_py("eval.py", "--model", "tiny-llava", "--bench", "qa", ws / "qa.jsonl", "--out", ws / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    f = f"error: {ws}/qa.jsonl"
    assert r.stderr.strip().splitlines() == [
        f"{f}:2: field 'answer': missing",
        f"{f}:3: field 'answer': must be a non-empty string",
        f"{f}:4: field 'options': must be a list of non-empty strings",
        f"{f}:5: field 'options': must be a list of non-empty strings",
        f"{f}:6: field 'options': must contain the answer \"blue\"",
        f"{f}:7: field 'options': \"Red\" and \"red \" read alike",
        f"{f}:7: field 'options': \"blue\" twice",
        f"{f}:8: field 'group': must be a non-empty string",
        f"{f}:9: field 'group': must be a non-empty string",
        f"{f}:10: field 'prior': \"purple\" is not one of the options",
        f"{f}:11: field 'prior': must be a non-empty string",
        f"{f}:13: field 'question': missing"]
    assert not (ws / "out").exists()  # nothing written


def test_a_hub_model_that_cannot_be_had(ws):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no network: answer at once
    r = eval_py("eval.py", "--model", "no-such-org/no-such-model", "--data", ws / "data.jsonl", "--out", ws / "out", env=env)
    assert error_line(r).startswith("error: --model: cannot load no-such-org/no-such-model (")


def test_answers_are_short_by_default_only_when_every_model_is_tiny(tmp_path):
    eval_py = __import__("importlib").import_module("eval")
    bench = write_jsonl(tmp_path / "chair.jsonl", [{"image": "a.png", "prompt": "Describe.", "objects": ["dog"]}])
    args = eval_py.parse_args(["--model", "tiny-llava", "--bench", "chair", str(bench), "--out", str(tmp_path / "o")])
    assert args.max_new_tokens == 32 and args.generation_note.startswith("tiny models: answers of at most 32 tokens")
    args = eval_py.parse_args(["--model", "tiny-llava", "--bench", "chair", str(bench), "--out", str(tmp_path / "o"),
                               "--max-new-tokens", "100"])
    assert args.max_new_tokens == 100 and args.generation_note == ""
    args = eval_py.parse_args(["--model", "some-org/a-real-vlm", "--bench", "chair", str(bench), "--out", str(tmp_path / "o")])
    assert args.max_new_tokens == 1024
