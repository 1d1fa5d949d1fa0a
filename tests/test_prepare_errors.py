"""Every mistake with `python -m mmpo.prepare` is one line on stderr and exit status 2, naming the
option, and comes before anything slow: options are checked before the data is read, model names
before any model loads, and nothing already written is touched."""
import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from conftest import ROOT, write_jsonl
from mmpo import models
from mmpo.prepare import build, command, regions
from mmpo.common.tagging import nltk_tagger

GROUNDING_HINT = ("; what needs no download: a local model directory for --detector/--segmenter, --segmenter '' "
                  "(boxes only), or --regions random|global")


@pytest.fixture
def data(tmp_path, image_dir):
    """Two valid rows, on two different images (tmp_path/img/0.png and 1.png)."""
    return write_jsonl(tmp_path / "d.jsonl", [
        {"id": str(i), "image": f"img/{i}.png", "prompt": "Q?", "chosen": "A dog.", "rejected": "A cat."} for i in range(2)])


def error_line(capsys) -> str:
    """The one line on stderr."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: these mistakes must be found before one."""
    def fail(*a, **k):
        raise AssertionError("a model was loaded")
    for module, name in ((models, "load_model"), (regions, "load_detector"), (regions, "load_segmenter"),
                         (command, "load_embedder")):
        monkeypatch.setattr(module, name, fail)


def test_help_and_option_errors_answer_before_torch_loads(tmp_path):
    """prepare checks its command line with the light mmpo.prepare.command before it imports torch: --help
    and a bad option answer at once, a bad option in one line (argparse's own errors included)."""
    script = ("import runpy, sys; sys.argv = ['prepare', *sys.argv[1:]]\n"
              "try:\n    runpy.run_module('mmpo.prepare', run_name='__main__')\n"
              "except SystemExit as e:\n    print('torch' in sys.modules, 'transformers' in sys.modules, e.code)\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{,}\n")
    for args, want, line in (
            (["--help"], "False False 0", None),
            (["nope"], "False False 2", "error: argument method: invalid choice: 'nope'"),
            (["napo", "--data", "x"], "False False 2", "error: the following arguments are required: --out"),
            (["napo", "--data", "x", "--out", "y", "--batch-size", "0"], "False False 2",
             "error: --batch-size 0: must be at least 1"),
            (["napo", "--data", "x", "--out", "y", "--batch-size", "two"], "False False 2",
             "error: argument --batch-size: invalid int value: 'two'"),
            # a refusal that needs no model: before torch too
            (["napo", "--data", str(tmp_path / "none.jsonl"), "--out", "y", "--model", "tiny-llava"], "False False 2",
             f"error: --data {tmp_path / 'none.jsonl'}: no such file"),
            # good options: then the heavy imports, and the rows' own error, still one line
            (["napo", "--data", str(bad), "--out", "y", "--model", "tiny-llava"], "True True 2",
             f"error: {bad}:1: invalid JSON (Expecting property name enclosed in double quotes, column 2)")):
        r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.stdout.strip().splitlines()[-1] == want, r.stdout + r.stderr
        if line is None:
            assert r.stdout.startswith("usage: python -m mmpo.prepare") and not r.stderr
        else:
            err = r.stderr.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(line), r.stderr  # no usage dump, no traceback


def test_a_bad_option_is_one_line_in_process_too(tmp_path, capsys):
    assert build.run(["napo", "--data", "x", "--out", str(tmp_path / "o"), "--lang-image", "grey"]) == 2
    assert error_line(capsys).startswith("error: argument --lang-image: invalid choice: 'grey'")


@pytest.mark.parametrize("options, line", [
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--k", "0"], "--k 0: must be at least 1"),
    (["--threshold", "1.5"], "--threshold 1.5: must be a detection score in [0, 1]"),
    (["--threshold", "-0.1"], "--threshold -0.1: must be a detection score in [0, 1]"),
    (["--noise-step", "1000"], "--noise-step 1000: must be a diffusion step in [0, 1000)"),
    (["--noise-step", "-1"], "--noise-step -1: must be a diffusion step in [0, 1000)"),
    (["--num-beams", "0"], "--num-beams 0: must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
    (["--do-sample", "--temperature", "0"], "--temperature 0.0: must be positive with --do-sample"),
])
def test_out_of_range_options_are_refused_before_the_data_is_read(tmp_path, capsys, options, line):
    missing = str(tmp_path / "not-read-yet.jsonl")  # the option is reported, not the missing file
    assert build.run(["napo", "--data", missing, "--out", str(tmp_path / "o"), "--model", "tiny-llava", *options]) == 2
    assert error_line(capsys) == f"error: {line}"
    assert not (tmp_path / "o").exists()


def test_a_detector_path_that_does_not_exist(data, tmp_path, capsys, no_model_loads):
    assert build.run(["mfpo", "--data", data, "--out", str(tmp_path / "o"), "--model", "tiny-llava",
                        "--detector", "/nonexistent/dir"]) == 2
    assert error_line(capsys) == f"error: --detector /nonexistent/dir: no such directory{GROUNDING_HINT}"


def test_a_hub_detector_offline_fails_at_once(data, tmp_path, capsys, monkeypatch, no_model_loads):
    """Offline, a hub id missing from the local cache is refused without the hub's ~30 s of retries."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    assert build.run(["mfpo", "--data", data, "--out", str(tmp_path / "o"), "--detector", "no-such-org/no-such-detector"]) == 2
    assert time.monotonic() - start < 5
    assert error_line(capsys) == ("error: --detector no-such-org/no-such-detector: no such directory, and not in the "
                                  f"Hugging Face cache (offline: HF_HUB_OFFLINE is set){GROUNDING_HINT}")


def test_the_segmenter_is_named_when_it_is_the_one_missing(data, tmp_path, capsys, no_model_loads):
    (tmp_path / "det").mkdir()
    (tmp_path / "det" / "config.json").write_text("{}")
    assert build.run(["mfpo", "--data", data, "--out", str(tmp_path / "o"), "--detector", str(tmp_path / "det"),
                        "--segmenter", "./no-sam-here"]) == 2
    assert error_line(capsys) == f"error: --segmenter ./no-sam-here: no such directory{GROUNDING_HINT}"


def test_a_folder_that_holds_no_detector(data, tmp_path, capsys, monkeypatch, no_model_loads):
    """A folder without a config.json is refused before any model loads; one with a config.json
    that still does not load: the first line of the loader's error says why."""
    det = tmp_path / "det"
    det.mkdir()
    argv = ["mfpo", "--data", data, "--out", str(tmp_path / "o"), "--detector", str(det), "--segmenter", ""]
    assert build.run(argv) == 2
    assert error_line(capsys) == f"error: --detector {det}: not a model directory (no config.json){GROUNDING_HINT}"
    (det / "config.json").write_text("{}")
    monkeypatch.undo()
    assert build.run(argv) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: --detector {det}: cannot load it (") and line.endswith(GROUNDING_HINT)


def test_a_model_that_cannot_be_loaded(data, tmp_path, capsys, no_model_loads):
    assert build.run(["napo", "--data", data, "--out", str(tmp_path / "o"), "--model", "./no-such-dir"]) == 2
    assert error_line(capsys) == "error: --model ./no-such-dir: no such directory"  # not the hub's "Repo id must ..."


def test_a_folder_that_holds_no_model(data, tmp_path, capsys, monkeypatch, no_model_loads):
    folder = tmp_path / "empty"
    folder.mkdir()
    argv = ["napo", "--data", data, "--out", str(tmp_path / "o"), "--model", str(folder)]
    assert build.run(argv) == 2
    assert error_line(capsys) == f"error: --model {folder}: not a model directory (no config.json)"
    (folder / "config.json").write_text("{}")
    monkeypatch.undo()
    assert build.run(argv) == 2
    assert error_line(capsys).startswith(f"error: --model {folder}: cannot load it (")


def test_an_embedder_that_cannot_be_loaded(data, tmp_path, capsys, no_model_loads):
    assert build.run(["symmpo", "--data", data, "--out", str(tmp_path / "o"), "--model", "tiny-llava",
                        "--embedder", "/nonexistent/clip"]) == 2
    assert error_line(capsys) == ("error: --embedder /nonexistent/clip: no such directory; leave --embedder out to "
                                  "retrieve with the --model's vision tower")


def test_an_embedder_without_image_features(data, tmp_path, capsys):
    """A text-only model loads, but gives no image embeddings to retrieve neighbours with."""
    from transformers import LlamaConfig, LlamaModel
    from mmpo.tiny import byte_tokenizer
    LlamaModel(LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2)).save_pretrained(tmp_path / "text")
    byte_tokenizer(["<s>", "</s>", "<pad>"], "<image>").save_pretrained(tmp_path / "text")
    capsys.readouterr()
    assert build.run(["symmpo", "--data", data, "--out", str(tmp_path / "o"), "--model", "tiny-llava",
                        "--embedder", str(tmp_path / "text")]) == 2
    assert error_line(capsys) == (f"error: --embedder {tmp_path / 'text'}: cannot load it (a LlamaModel gives no image "
                                  "embeddings; give an image-text model such as a CLIP); leave --embedder out to "
                                  "retrieve with the --model's vision tower")


@pytest.mark.parametrize("make, line", [
    (lambda d: str(d / "d.jsonl"), "--pool {}: not a folder"),
    (lambda d: os.makedirs(d / "empty") or str(d / "empty"), "--pool {}: no images in it (.png, .jpg, .jpeg, .webp, .bmp)"),
])
def test_a_pool_with_no_images(data, tmp_path, capsys, no_model_loads, make, line):
    pool = make(tmp_path)
    assert build.run(["symmpo", "--data", data, "--out", str(tmp_path / "o"), "--model", "tiny-llava", "--pool", pool]) == 2
    assert error_line(capsys) == "error: " + line.format(pool)


def test_a_pool_image_that_does_not_open(data, tmp_path, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(pool / "a.png")
    (pool / "b.png").write_text("not an image")
    assert build.run(["symmpo", "--data", data, "--out", str(tmp_path / "o"), "--model", "tiny-llava", "--pool", str(pool),
                        *["--max-new-tokens", "2", "--num-beams", "1"]]) == 2
    assert error_line(capsys).startswith(f"error: --pool: cannot read image {pool / 'b.png'} (cannot identify image file")


def test_one_image_cannot_be_its_own_contrast(tmp_path, image_dir, capsys, monkeypatch, no_model_loads):
    path = write_jsonl(tmp_path / "same.jsonl", [
        {"id": str(i), "image": "img/0.png", "prompt": "Q?", "chosen": "A dog.", "rejected": "A cat."} for i in range(2)])
    assert build.run(["symmpo", "--data", path, "--out", str(tmp_path / "o"), "--model", "tiny-llava"]) == 2
    assert error_line(capsys) == (f"error: symmpo: the data has only one image, {image_dir / '0.png'}, and it cannot be its "
                                  "own contrast image: give --pool a folder of other images, or --contrast crop|noise|blank")
    # rows that bring their own contrast image need no neighbour: the same data is fine then
    path = write_jsonl(tmp_path / "given.jsonl", [
        {"id": str(i), "image": "img/0.png", "contrast_image": "img/1.png", "prompt": "Q?", "chosen": "A dog.",
         "rejected": "A cat."} for i in range(2)])
    monkeypatch.undo()
    assert build.run(["symmpo", "--data", path, "--out", str(tmp_path / "o"), "--model", "tiny-llava",
                        "--max-new-tokens", "2", "--num-beams", "1"]) == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["data.jsonl", "images", "prepare.json"]  # its lock let go


def test_a_folder_in_use_is_refused(data, tmp_path, capsys, no_model_loads):
    """One run per folder: prepare into a folder that a live run holds (its lock refreshed now)."""
    out = tmp_path / "busy"
    out.mkdir()
    (out / ".mmpo.lock").write_text(json.dumps({"program": "train.py", "host": "elsewhere", "pid": 7}))
    assert build.run(["napo", "--data", data, "--out", str(out), "--model", "tiny-llava"]) == 2
    assert error_line(capsys) == (f"error: {out} is in use by train.py (pid 7 on elsewhere): one run per folder; "
                                  "wait for it, or choose another folder")
    assert os.listdir(out) == [".mmpo.lock"]  # nothing written


def test_an_out_that_cannot_be_written(data, tmp_path, capsys, no_model_loads):
    (tmp_path / "file").write_text("a regular file")
    out = tmp_path / "file" / "out"
    assert build.run(["napo", "--data", data, "--out", str(out), "--model", "tiny-llava"]) == 2
    assert error_line(capsys) == f"error: --out {out}: cannot write there (Not a directory)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_out_without_write_permission(data, tmp_path, capsys, no_model_loads):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert build.run(["napo", "--data", data, "--out", str(out), "--model", "tiny-llava"]) == 2
    finally:
        out.chmod(0o700)
    assert error_line(capsys) == f"error: --out {out}: cannot write there (Permission denied)"


def test_overwrite_never_deletes_the_input(tmp_path, capsys, no_model_loads):
    """--out is the input's own folder: its data.jsonl is the input, its images/ the input's images."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "0.png")
    row = {"id": "0", "image": "images/0.png", "prompt": "Q?", "chosen": "A dog.", "rejected": "A cat."}
    data = write_jsonl(tmp_path / "data.jsonl", [row])
    assert build.run(["napo", "--data", data, "--out", str(tmp_path), "--model", "tiny-llava", "--overwrite"]) == 2
    assert error_line(capsys) == f"error: {data}: --out would overwrite the input"
    other = write_jsonl(tmp_path / "other.jsonl", [row])
    assert build.run(["napo", "--data", other, "--out", str(tmp_path), "--model", "tiny-llava", "--overwrite"]) == 2
    assert error_line(capsys) == (f"error: --overwrite would delete {tmp_path / 'images'}, which holds input images "
                                  f"({tmp_path / 'images' / '0.png'}): choose another --out")
    assert (tmp_path / "data.jsonl").exists() and (tmp_path / "images" / "0.png").exists()


@pytest.mark.skipif(nltk_tagger() is not None, reason="nltk and its tagger data are installed here")
def test_the_nltk_tagger_when_nltk_is_missing(data, tmp_path, capsys, no_model_loads):
    assert build.run(["mfpo", "--data", data, "--out", str(tmp_path / "o"), "--regions", "global", "--tagger", "nltk"]) == 2
    assert error_line(capsys) == ("error: --tagger nltk needs nltk and its tagger data (pip install nltk; "
                                  "python -m nltk.downloader averaged_perceptron_tagger_eng), or --tagger rules")


def test_generation_defaults_are_the_papers_and_a_quick_look_for_tiny_models(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"image": "a.png", "prompt": "Q?", "chosen": "a", "rejected": "b"}])

    def options(*extra):
        args = command.build_parser().parse_args(["napo", "--data", str(data), "--out", str(tmp_path / "o"), *extra])
        command.check_options(args)
        return args.max_new_tokens, args.num_beams, args.generation_note
    assert options("--model", "some-org/a-real-vlm") == (1024, 3, "")  # NaPO's released generation
    tokens, beams, said = options("--model", "tiny-llava")
    assert (tokens, beams) == (32, 1) and said.startswith("tiny-llava (random, tiny): generating at most 32 tokens with 1")
    tokens, beams, said = options("--model", "tiny-llava", "--num-beams", "3")  # what is given stays
    assert (tokens, beams) == (32, 3) and "at most 32 tokens with 3 beam(s)" in said
    assert options("--model", "tiny-llava", "--num-beams", "2", "--max-new-tokens", "8") == (8, 2, "")
