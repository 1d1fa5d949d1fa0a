"""eval.py --chair-variant: OPERA's CHAIR (nltk's tags and WordNet's lemmas) reaches the figures,
eval.json and the table; without nltk or its data it is one line and exit status 2 before any
model loads. (The variant's rules, worked by hand: test_metrics.py.)"""
import json
import os

import eval as evaluate
from conftest import write_jsonl
from test_eval_errors import error_line, eval_py
from test_metrics import nltk_stand_in  # noqa: F401  (a fixture)


def stub_nltk(folder, body: str) -> dict:
    """An environment whose ``import nltk`` finds a package made of ``body``, ahead of any real one."""
    (folder / "nltk").mkdir(parents=True)
    (folder / "nltk" / "__init__.py").write_text(body)
    return {**os.environ, "PYTHONPATH": str(folder)}


def test_without_nltk_or_its_data_opera_is_one_line_before_any_model(tmp_path, image_dir):
    chair = write_jsonl(tmp_path / "chair.jsonl", [{"image": "img/0.png", "prompt": "Describe.", "objects": ["dog"]}])
    argv = ["eval.py", "--model", "tiny-llava", "--bench", "chair", chair, "--chair-variant", "opera",
            "--out", tmp_path / "out"]
    r = eval_py(*argv, env=stub_nltk(tmp_path / "none", "raise ImportError('No module named nltk')\n"))
    assert error_line(r) == ("error: --chair-variant opera needs nltk, which is not installed: pip install nltk && "
                             "python -m nltk.downloader averaged_perceptron_tagger_eng wordnet")
    assert "== base" not in r.stdout and not (tmp_path / "out").exists()  # no model loaded, nothing written
    # nltk there, its tagger not: nltk's own LookupError names the package
    no_tagger = ("def pos_tag(words):\n"
                 "    raise LookupError(\"Resource 'averaged_perceptron_tagger_eng' not found.\\n"
                 "  >>> nltk.download('averaged_perceptron_tagger_eng')\")\n"
                 "class stem:\n"
                 "    class WordNetLemmatizer:\n"
                 "        def lemmatize(self, word, pos='n'):\n"
                 "            return word\n")
    r = eval_py(*argv, env=stub_nltk(tmp_path / "no-tagger", no_tagger))
    assert error_line(r) == ("error: --chair-variant opera needs nltk's data, not found here: "
                             "python -m nltk.downloader averaged_perceptron_tagger_eng")


def test_the_variant_reaches_the_figures_and_is_recorded(tmp_path, image_dir, monkeypatch, nltk_stand_in):
    """The same answer under both variants (its generation replaced): the table and eval.json say
    which rules read it."""
    monkeypatch.setattr(evaluate, "generate",
                        lambda model, processor, prompts, images, **kw: (["A man is skiing past a bus."], [6]))
    chair = write_jsonl(tmp_path / "chair.jsonl", [{"image": "img/0.png", "prompt": "Describe.", "objects": ["person"],
                                                    "captions": ["A man is skiing down a hill."]}])
    figures = {}
    for variant in ("reference", "opera"):
        out = tmp_path / variant
        assert evaluate.run(["--model", "tiny-llava", "--bench", "chair", chair, "--chair-variant", variant,
                             "--out", str(out)]) == 0
        saved = json.load(open(out / "eval.json"))
        assert saved["options"]["chair_variant"] == variant
        figures[variant] = saved["metrics"]["base"]
        legend = open(out / "eval.md").read().splitlines()[-1]
        assert legend.endswith("CHAIR reads objects by the reference rules (Rohrbach et al.'s chair.py)." if
                               variant == "reference" else "CHAIR reads objects by OPERA's chair.py (nltk's "
                               "part-of-speech tags and WordNet lemmas: --chair-variant opera).")
    # reference: a man (person); "skiing" and "bus" ("bu") are no objects -> nothing hallucinated
    assert (figures["reference"]["chair/mentions"], figures["reference"]["chair/chair_i"]) == (1, 0)
    # OPERA: person, skis (ski), bus; its caption's "skiing" makes the skis true: only the bus is hallucinated
    assert (figures["opera"]["chair/mentions"], figures["opera"]["chair/hallucinated"]) == (3, 1)
    assert figures["opera"]["chair/chair_s"] == 1
    answers = [json.loads(line) for line in open(tmp_path / "opera" / "answers-base-chair.jsonl")]
    assert (answers[0]["objects"], answers[0]["hallucinated"]) == (["person", "skis", "bus"], ["bus"])
