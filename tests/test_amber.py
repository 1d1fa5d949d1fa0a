"""AMBER (mmpo/evaluation/amber.py) on 23 hand-worked responses: 10 descriptions (synonyms, safe
words, repeats, a truth list naming an object twice, an object in both lists, capitalized and
WordNet-lemmatized nouns) and 13 yes/no answers (existence, the three attribute types, both
relation types). Every figure below was worked by hand and is what AMBER's own inference.py
prints on the same files, run with its nltk and spaCy stood in for: nltk's tokenizer and tagger
with the tagger's released weights, WordNet's noun lists, and the similarity table below in
place of en_core_web_lg's vectors. Neither nltk's data nor spaCy is needed here: a description
is given as the nouns nltk finds in it, which the built-in rules find too (tested below)."""
import json
import os

import pytest
from PIL import Image

from mmpo.cli import UserError
from mmpo.evaluation import amber

# The entries of AMBER's data/relation.json (github.com/junyangwang0410/AMBER) that the cases use
RELATION = {
    "man": ["person", "people", "individual", "boy"], "person": ["people", "individual", "man", "woman", "boy", "girl"],
    "car": ["window", "door", "tire", "vehicle", "light", "mirror", "plate"], "road": ["path", "street", "ground"],
    "dog": [], "bench": ["chair", "armrest"], "tree": ["forest", "leave", "bush"], "sky": [], "cloud": [],
    "sea": ["water", "lake"], "beach": ["sand", "shore", "waterfont", "ground", "desert"],
    "ship": ["boat", "vessel", "sailing", "vehicle"], "bird": ["bill"], "mountain": ["hill", "rock", "stone", "reef"],
    "cat": [], "table": ["desk"], "cup": [], "plate": [], "vase": [], "woman": ["person", "people", "individual", "girl"],
    "umbrella": [], "ground": ["floor"], "bus": ["car", "truck", "window", "door", "tire", "vehicle", "light", "mirror",
                                               "plate"],
    "horse": [], "grass": ["ground"], "fence": ["bail", "barrier", "rail", "bar", "railing"], "cow": [],
    "sofa": ["couch", "chair", "bench"], "light": [], "window": ["glass"], "sunglasses": [], "glass": [],
    "coffee": ["cafe", "drink"], "camera": [], "sign": ["signal", "pole", "street", "road", "path"]}
SAFE_WORDS = "orange\nsnack\nline\ncamera\nlight\nshoe\nsign\nrange\nindividual"  # AMBER's, as released (no final newline)
# spaCy's similarity stood in for: two words are similar above 0.8 (0.8 itself is not)
SIMILARITY = {("cat", "dog"): 0.82, ("cup", "glass"): 0.81, ("cup", "vase"): 0.80, ("plate", "vase"): 0.84,
              ("cow", "horse"): 0.79, ("desk", "table"): 0.9}


def similar(a, b):
    return a == b or SIMILARITY.get(tuple(sorted((a, b))), 0) > amber.SIMILARITY


def exact(a, b):
    return a == b


G1 = (["man", "person", "car", "road"], ["dog", "bench", "tree"])
G2 = (["sky", "cloud", "sea", "beach", "ship", "ship"], ["bird", "person", "mountain"])
G3 = (["cat", "table", "cup"], ["dog", "plate", "vase"])
# (truth, hallu, description, its nouns (nltk's, lemmatized, AMBER's words only),
#  CHAIR, Cover, Hal, Cog with synonyms, and CHAIR, Cover, Cog without)
DESCRIPTIONS = [
    # "man" is first among person's associated words: it covers "person", and "man" stays uncovered;
    # Hal is 0.1, not 0: 100 - 1 / 1.001 * 100 (every count starts at 0.001)
    (*G1, "A man is standing next to a car on the street.", ["man", "car", "street"], 0.0, 75.0, 0.1, 0.0, 0.0, 75.0, 0.0),
    # every noun in the hallu list: hallucinated and named, 3 / 3.001 -> 100.0
    (*G1, "Two dogs sit on a bench near a tree.", ["dog", "bench", "tree"], 100.0, 0.0, 100.0, 100.0, 100.0, 0.0, 100.0),
    # camera, sign, light: safe words, in CHAIR's count but never hallucinated; "man" twice covers person twice
    (*G1, "A man with a camera and a man with a sign stand by the car's light.",
     ["man", "camera", "man", "sign", "car", "light"], 0.0, 50.0, 0.1, 0.0, 0.0, 50.0, 0.0),
    # "People", "Birds": capitalized, never AMBER words; "boat" covers the first ship, the second never;
    # "hills" -> hill, mountain's word: named and hallucinated
    (*G2, "A ship and a boat on the sea. People on the beach. Birds over the hills.",
     ["ship", "boat", "sea", "beach", "hill"], 20.0, 50.0, 100.0, 33.3, 20.0, 50.0, 33.3),
    # synonyms: dog (in the hallu list) is like cat (true): not hallucinated; glass is like cup; vase is
    # like plate (0.84): the similarity step names plate as well as vase, and vase - cup at 0.80 is not
    # similar: vase alone is hallucinated. Exact: dog, glass, vase hallucinated
    (*G3, "There is a dog on the table next to a glass and a vase.", ["dog", "table", "glass", "vase"],
     25.0, 100.0, 100.0, 100.0, 75.0, 33.3, 66.6),
    # ground is in both lists: as a true object first, never named
    (["woman", "umbrella", "ground"], ["ground", "car", "bus"], "A woman holds an umbrella on the ground near a bus.",
     ["woman", "umbrella", "ground", "bus"], 25.0, 100.0, 100.0, 33.3, 25.0, 100.0, 33.3),
    # "men" stays "men" (WordNet's noun), no AMBER word; "Cows" capitalized; horses -> horse, trees -> tree
    (["horse", "grass", "fence"], ["cow", "person", "tree"],
     "Two men ride horses on the grass near a fence. Cows and trees are behind them.",
     ["horse", "grass", "fence", "tree"], 25.0, 100.0, 100.0, 33.3, 25.0, 100.0, 33.3),
    # couch covers sofa; "light" is a safe word, so the true light stays uncovered; cup (hallu) is like
    # glass, window's word: not hallucinated, and glass is named too. Exact: cup hallucinated
    (["sofa", "light", "window"], ["sunglasses", "glass", "cup"],
     "The couch is next to the window, and a woman in sunglasses holds a cup of coffee under the light.",
     ["couch", "window", "woman", "cup", "coffee", "light"], 33.3, 66.6, 100.0, 66.6, 50.0, 66.6, 33.3),
    # no AMBER word at all
    (*G2, "It is a sunny day.", [], 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0),
    # repeats: dog twice, like cat twice; cow - horse at 0.79 is not similar
    (*G3, "A cat and a dog and a dog and a cow.", ["cat", "dog", "dog", "cow"], 25.0, 33.3, 100.0, 33.3, 75.0, 33.3, 33.3),
]
# (annotation type, truth, generated answer, read by --pope-parse standard)
QUESTIONS = [
    ("discriminative-hallucination", "no", "No", "No"),
    ("discriminative-hallucination", "no", "Yes", "Yes"),
    ("discriminative-hallucination", "no", "There is no dog.", "No"),
    ("discriminative-attribute-state", "yes", "Yes", "Yes"),
    ("discriminative-attribute-state", "no", "Yes", "Yes"),
    ("discriminative-attribute-state", "yes", "No", "No"),
    ("discriminative-attribute-number", "yes", "No", "No"),
    ("discriminative-attribute-number", "no", "No", "No"),
    ("discriminative-attribute-action", "yes", "Yes, the man is running.", "Yes"),
    ("discriminative-attribute-action", "no", "Maybe.", None),  # strict: unread (standard reads it yes)
    ("discriminative-relation", "yes", "Yes", "Yes"),
    ("relation", "no", "No, they do not touch.", "No"),  # AMBER's other relation type
    ("relation", "no", "Yes", "Yes"),
]
# each question alone: accuracy, precision, recall, F1 of its group
ALONE = [(99.9, 99.9, 99.9, 99.9), (0.0, 0.0, 0.0, 0.0), (99.9, 99.9, 99.9, 99.9), (99.9, 0.0, 0.0, 0.0),
         (0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0), (99.9, 99.9, 99.9, 99.9),
         (99.9, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0), (99.9, 0.0, 0.0, 0.0), (99.9, 99.9, 99.9, 99.9), (0.0, 0.0, 0.0, 0.0)]
# all questions: accuracy, precision, recall, F1 per group
TOGETHER = {
    "discriminative": (53.8, 66.7, 50.0, 57.2),  # 7/13 right; 4 of 6 "No"s right; 4 of 8 "no"s found
    "existence": (66.6, 100.0, 66.6, 79.9),  # 2 / 2.001 -> 99.95 -> 100.0; F1's eps is 0.001 here
    "attribute": (42.8, 33.3, 33.3, 33.3),  # 3 / (3.001 + 2.001 + 2.001): the three types' counts added
    "attribute/state": (33.3, 0.0, 0.0, 0.0),
    "attribute/number": (50.0, 50.0, 99.9, 66.6),
    "attribute/action": (50.0, 0.0, 0.0, 0.0),  # no "No" said: precision 0 / 0.001
    "relation": (66.6, 99.9, 50.0, 66.6),
}


def write_amber(folder) -> str:
    """An AMBER checkout in ``folder`` with the cases' annotations, images and query file."""
    data = os.path.join(folder, "data")
    os.makedirs(os.path.join(data, "query"), exist_ok=True)
    os.makedirs(os.path.join(folder, "image"), exist_ok=True)
    annotations = [{"id": i + 1, "type": "generative", "truth": d[0], "hallu": d[1]} for i, d in enumerate(DESCRIPTIONS)]
    annotations += [{"id": len(annotations) + i + 1, "type": q[0], "truth": q[1]} for i, q in enumerate(QUESTIONS)]
    queries = [{"id": a["id"], "image": f"AMBER_{a['id']}.jpg",
                "query": "Describe this image." if a["type"] == "generative" else f"Question {a['id']}?"}
               for a in annotations]
    for q in queries:
        Image.new("RGB", (32, 32), (q["id"] * 10, 100, 50)).save(os.path.join(folder, "image", q["image"]))
    with open(os.path.join(data, "annotations.json"), "w") as f:
        json.dump(annotations, f)
    with open(os.path.join(data, "relation.json"), "w") as f:
        json.dump(RELATION, f)
    with open(os.path.join(data, "safe_words.txt"), "w") as f:
        f.write(SAFE_WORDS)
    with open(os.path.join(data, "metrics.txt"), "w") as f:  # as AMBER's: sums from 0, counts from 0.001
        f.write("".join(f"{c}={0.001 if c.endswith('_num') else 0}\n" for c in amber.COUNTERS))
    with open(os.path.join(data, "query", "query_all.json"), "w") as f:
        json.dump(queries, f)
    return os.path.join(data, "query", "query_all.json")


@pytest.fixture
def checkout(tmp_path):
    query = write_amber(tmp_path / "AMBER")
    folder = str(tmp_path / "AMBER")
    return folder, amber.read_queries(query, folder, os.path.join(folder, "image")), amber.read_folder(folder)


def figures(rows, responses, folder, similar):
    return amber.amber(rows, responses, folder, similar)[0]


# ---- descriptions ---------------------------------------------------------------------------------

def test_each_description_as_amber_counts_it(checkout):
    _, rows, folder = checkout
    for row, (*_, nouns, chair, cover, hal, cog, chair_x, cover_x, cog_x) in zip(rows, DESCRIPTIONS):
        m = figures([row], [nouns], folder, similar)
        assert [m[f"generative/{k}"] for k in ("chair", "cover", "hal", "cog")] == [chair, cover, hal, cog], nouns
        m = figures([row], [nouns], folder, exact)
        assert [m[f"generative/{k}"] for k in ("chair", "cover", "hal", "cog")] == [chair_x, cover_x, hal, cog_x], nouns


def test_the_steps_behind_the_figures(checkout):
    _, rows, folder = checkout
    step = [amber.judge_description(d[3], d[0], d[1], folder, similar) for d in DESCRIPTIONS]
    assert step[0]["covered"] == [False, True, True, True]  # man covers person, not man
    assert step[2]["nouns"] == ["man", "camera", "man", "sign", "car", "light"] and not any(step[2]["hallucinated"])
    assert step[3]["covered"] == [False, False, True, True, True, False]  # the second ship is never covered
    assert step[4]["hallucinated"] == [False, False, False, True] and step[4]["named"] == [True, True, True]
    assert step[5]["covered"] == [True, True, True] and step[5]["named"] == [False, False, True]
    assert step[7]["hallucinated"] == [False, False, True, False, True, False]  # woman, coffee
    assert step[7]["covered"] == [True, False, True] and step[7]["named"] == [False, True, True]


def test_all_descriptions_together(checkout):
    _, rows, folder = checkout
    gen = rows[:len(DESCRIPTIONS)]
    nouns = [d[3] for d in DESCRIPTIONS]
    m = figures(gen, nouns, folder, similar)
    # 10 of 39 nouns hallucinated; 20 of 39 truth entries covered; 7 of 10 descriptions hallucinate;
    # 12 of 30 hallu entries named
    assert m == {"examples": 10, "generative/examples": 10, "generative/chair": 25.6, "generative/cover": 51.3,
                 "generative/hal": 70.0, "generative/cog": 40.0, "generative/nouns": 39}
    m = figures(gen, nouns, folder, exact)  # 15 hallucinated, 18 covered, 10 named
    assert [m[f"generative/{k}"] for k in ("chair", "cover", "hal", "cog")] == [38.5, 46.2, 70.0, 33.3]


def test_the_rules_find_the_nouns_nltk_finds(checkout):
    _, _, folder = checkout
    for d in DESCRIPTIONS:
        assert amber.rule_nouns(d[2], folder["vocabulary"]) == d[3], d[2]


def test_wordnet_lemmas_of_amber_words():
    vocabulary = {"man", "vase", "sunglasses", "tree", "dog", "potato", "bus", "TV", "knife", "glass", "leave"}
    for word, lemma in [("men", "men"), ("vases", "vas"), ("sunglasses", "sunglass"), ("leaves", "leaf"),
                        ("trees", "tree"), ("Dogs", "Dogs"), ("potatoes", "potato"), ("buses", "bus"), ("TV", "TV"),
                        ("TVs", "TVs"), ("knives", "knife"), ("glasses", "glass"), ("bus", "bus")]:
        assert amber.lemma(word, vocabulary) == lemma, word


# ---- yes/no questions -------------------------------------------------------------------------------

def test_questions_alone_and_together(checkout):
    _, rows, folder = checkout
    asked = rows[len(DESCRIPTIONS):]
    assert [amber.read_answer(q[2], "strict" if q[2] == "Maybe." else "standard") for q in QUESTIONS] == \
        [q[3] for q in QUESTIONS]
    groups = {"existence": "existence", "state": "attribute/state", "number": "attribute/number",
              "action": "attribute/action", "relation": "relation"}
    for row, q, expected in zip(asked, QUESTIONS, ALONE):
        m = figures([row], [q[3]], folder, similar)
        g = groups[row["group"]]
        assert tuple(m[f"{g}/{k}"] for k in ("accuracy", "precision", "recall", "f1")) == expected, q
        assert "discriminative/accuracy" not in m  # overall figures only with all three dimensions
    m, details = amber.amber(asked, [q[3] for q in QUESTIONS], folder, similar)
    for g, expected in TOGETHER.items():
        assert tuple(m[f"{g}/{k}"] for k in ("accuracy", "precision", "recall", "f1")) == expected, g
    assert (m["discriminative/examples"], m["discriminative/unread"], m["attribute/examples"]) == (13, 1, 7)
    assert details[2] == {"read": "No", "correct": True} and details[9] == {"read": None, "correct": False}
    assert "generative/chair" not in m


def test_exact_answers_as_amber_compares_them(checkout):
    """The default, --amber-parse exact: only the answer "Yes" or "No" itself counts (AMBER's
    inference.py compares the response so, and SymMPO's evaluation gives it the model's answer):
    4 of the 13 answers are sentences, unread and wrong; 4 right of 13 (plus AMBER's 0.001)."""
    _, rows, folder = checkout
    reads = [amber.read_answer(q[2]) for q in QUESTIONS]
    assert reads == [q[3] if q[2] in ("Yes", "No") else None for q in QUESTIONS] and reads.count(None) == 4
    assert amber.read_answer("  No\n") == "No" and amber.read_answer("no") is None  # stripped, not lower-cased
    m, _ = amber.evaluate(rows[len(DESCRIPTIONS):], [q[2] for q in QUESTIONS], folder)
    assert (m["discriminative/accuracy"], m["discriminative/unread"]) == (30.8, 4)


# ---- without spaCy or nltk's data; the folder's files ------------------------------------------------

def test_without_spacy_or_nltk_the_figures_say_so(checkout, monkeypatch):
    _, rows, folder = checkout
    monkeypatch.setattr(amber, "nltk_nouns", lambda: None)
    monkeypatch.setattr(amber, "spacy_similarity", lambda: None)
    answers = [d[2] for d in DESCRIPTIONS] + [q[2] for q in QUESTIONS]
    m, _ = amber.evaluate(rows, answers, folder, "standard")
    assert m["nouns"].startswith("rules (deviation") and m["synonyms"].startswith("exact only (deviation")
    assert [m[f"generative/{k}"] for k in ("chair", "cover", "hal", "cog")] == [38.5, 46.2, 70.0, 33.3]
    assert m["discriminative/accuracy"] == 53.8 and m["discriminative/unread"] == 0  # standard reads "Maybe." yes
    monkeypatch.setattr(amber, "spacy_similarity", lambda: lambda a, b: 1.0 if a == b else SIMILARITY.get(
        tuple(sorted((a, b))), 0.0))
    m, _ = amber.evaluate(rows, answers, folder)
    assert m["synonyms"] == "spaCy en_core_web_lg > 0.8" and m["generative/chair"] == 25.6


def test_missing_or_malformed_files_are_one_line_errors(tmp_path):
    query = write_amber(tmp_path / "A")
    folder, images = str(tmp_path / "A"), str(tmp_path / "A" / "image")
    data = tmp_path / "A" / "data"

    def error(match):
        amber.read_folder.cache_clear()
        with pytest.raises(UserError, match=match) as e:
            amber.read_queries(query, folder, images)
        assert "\n" not in str(e.value)

    os.rename(query, query + ".moved")
    error(r"query_all.json: no such file$")
    os.rename(query + ".moved", query)
    os.remove(images + "/AMBER_3.jpg")
    error(r"AMBER_3.jpg: image file not found; give --amber-images")
    with open(query) as f:
        queries = json.load(f)
    with open(query, "w") as f:
        json.dump(queries + [{"id": 99, "image": "AMBER_1.jpg", "query": "?"}], f)
    error(r"query 24: field 'id': must be a whole number from 1 to 23")
    annotations = json.loads((data / "annotations.json").read_text())
    annotations[1]["hallu"] = ["dog", "unicorn"]
    annotations[12]["truth"] = "Yes"
    (data / "annotations.json").write_text(json.dumps(annotations))
    error(r"annotations.json: entry 2: field 'hallu': 'unicorn' is not a word of relation.json \(and 1 more problems\)")
    (data / "relation.json").write_text("{")
    error(r"relation.json: not a JSON file")
    os.remove(data / "relation.json")
    error(r"relation.json: no such file \(give --amber-folder")
    (data / "relation.json").write_text(json.dumps(RELATION))
    annotations[1]["hallu"], annotations[12]["truth"] = ["dog"], "yes"
    (data / "annotations.json").write_text(json.dumps(annotations))
    (data / "metrics.txt").write_text("chair_num=abc\n")
    error(r"metrics.txt:1: chair_num: not a number")
    (data / "metrics.txt").write_text("chair_num=0.001\n")
    error(r"metrics.txt: no value for chair_score and 42 more")


# ---- eval.py --bench amber ----------------------------------------------------------------------------

def test_eval_bench_amber(tmp_path, monkeypatch):
    """eval.py --bench amber on the cases' answers (the generation replaced): AMBER's folder found
    from the query file, the answers saved with what was read, the figures and their labels."""
    import eval as evaluate
    query = write_amber(tmp_path / "AMBER")
    answers = [d[2] for d in DESCRIPTIONS] + [q[2] for q in QUESTIONS]
    monkeypatch.setattr(evaluate, "generate", lambda model, processor, prompts, images, **kw: (answers, [5] * len(answers)))
    monkeypatch.setattr(amber, "nltk_nouns", lambda: None)
    monkeypatch.setattr(amber, "spacy_similarity", lambda: None)
    assert evaluate.run(["--model", "tiny-llava", "--bench", "amber", query, "--amber-parse", "standard",
                         "--out", str(tmp_path / "o")]) == 0  # the sentences read as POPE's: 0 unread but "Maybe."
    report = json.load(open(tmp_path / "o" / "eval.json"))
    m = report["metrics"]["base"]
    assert report["options"]["amber_parse"] == "standard"
    assert [m[f"amber/generative/{k}"] for k in ("chair", "cover", "hal", "cog")] == [38.5, 46.2, 70.0, 33.3]
    for g, expected in TOGETHER.items():
        assert tuple(m[f"amber/{g}/{k}"] for k in ("accuracy", "precision", "recall", "f1")) == expected, g
    assert m["amber/examples"] == 23 and m["amber/nouns"].startswith("rules (deviation")
    table = open(tmp_path / "o" / "eval.md").read()
    assert "| amber/generative/chair ↓ | 38.5 |" in table and "| amber/generative/cover ↑ | 46.2 |" in table
    assert "| amber/synonyms | exact only (deviation: no spaCy en_core_web_lg) |" in table
    assert "Implicit rewards" not in table  # no --data: no implicit reward in the table to explain
    saved = [json.loads(line) for line in open(tmp_path / "o" / "answers-base-amber.jsonl")]
    assert saved[6]["id"] == 7 and saved[6]["nouns"] == ["horse", "grass", "fence", "tree"]
    assert saved[6]["hallucinated"] == ["tree"] and saved[12] == {**saved[12], "read": "No", "correct": True}


def test_eval_py_says_which_amber_path_is_wrong(tmp_path):
    """A checkout given for a query file, a query file outside any checkout, a missing one, and
    the AMBER options without --bench amber: one line each, naming the path, before any model."""
    import eval as evaluate
    from mmpo.cli import UserError
    query = write_amber(tmp_path / "AMBER")
    stray = tmp_path / "query_all.json"
    stray.write_text(open(query).read())

    def error(*argv) -> str:
        with pytest.raises(UserError) as e:
            evaluate.parse_args(["--model", "tiny-llava", *map(str, argv)])
        return str(e.value)
    assert error("--bench", "amber", tmp_path / "AMBER") == (
        f"--bench amber {tmp_path / 'AMBER'}: a folder: give one of its query files, as {query}")
    assert error("--bench", "amber", tmp_path / "nope.json") == (
        f"--bench amber {tmp_path / 'nope.json'}: no such file (one of AMBER's data/query/query_*.json)")
    assert error("--bench", "amber", stray) == (
        f"--bench amber {stray}: not in an AMBER checkout (DIR/data/query/FILE): give --amber-folder DIR")
    assert evaluate.parse_args(["--model", "tiny-llava", "--bench", "amber", str(stray), "--amber-folder",
                                str(tmp_path / "AMBER")]).amber_images == str(tmp_path / "AMBER" / "image")
    assert error("--bench", "pope", stray, "--amber-folder", tmp_path / "AMBER") == "--amber-folder: only with --bench amber"
