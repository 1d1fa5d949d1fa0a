"""AMBER (Wang et al. 2023, https://arxiv.org/abs/2311.07397), the hallucination benchmark SymMPO
reports, computed as ``inference.py`` (at the root of github.com/junyangwang0410/AMBER) does, from the
files of the user's AMBER checkout: ``data/annotations.json``, ``data/relation.json`` (each
object's associated words), ``data/safe_words.txt`` and ``data/metrics.txt`` (the counters'
starting values). Pure functions, no torch; the figures are percentages rounded to one decimal,
as AMBER prints them (CHAIR and POPE elsewhere in eval.py are fractions).

A query's kind is the ``type`` of annotation number id - 1 (AMBER indexes the list by position):
"generative" (describe the image), "discriminative-hallucination" (existence),
"discriminative-attribute-state" / "-number" / "-action" (attribute), and any other type is a
relation question (the released file has "discriminative-relation", all "yes", and "relation",
all "no").

Generative (a description): its nouns are nltk's ``pos_tag(word_tokenize(text))`` tokens tagged
NN*, each lemmatized by WordNetLemmatizer (as a noun). Nothing is lower-cased: "Dogs" opening a
sentence stays "Dogs" and counts as nothing, nor does "TVs", while "TV" is AMBER's word "TV".
WordNet's shortest lemma wins, so "men" stays "men" (a WordNet noun, the work force), "vases"
becomes "vas", "sunglasses" "sunglass", "leaves" "leaf": none of them is an AMBER word. Only
nouns that are words of relation.json (a key or an associated word) are kept, repeats included.
Each kept noun, in order:
  1. a safe word (safe_words.txt: orange, light, sign...) is skipped: never hallucinated, never
     covering a true object, but counted among the nouns (CHAIR's denominator);
  2. a noun equal to a word of the truth list covers a true object: the words are the associated
     words of each true object in turn, then the true objects themselves, and the first equal
     one counts, so "person" said of an image whose truth is [man, person] covers "man"
     (person is among man's associated words) and leaves "person" uncovered; the noun is not
     hallucinated;
  3. otherwise a noun equal to a word of the hallu list marks its object as named (Cog), found
     the same way (associated words first); then, whether or not it was equal, the object of the
     first hallu word that spaCy finds similar (``nlp(noun).similarity(nlp(word)) > 0.8``,
     en_core_web_lg) is named too, which may be another one;
  4. the first word of the truth list that spaCy finds similar covers its object, and the noun is
     not hallucinated; if none, the noun is hallucinated, whether or not it is in the hallu list.
A truth (or hallu) list that names an object twice has two entries, and only the first can be
covered: AMBER's annotations have 14 such images. Over all descriptions, in order, starting from
metrics.txt's values (0 for the sums, 0.001 for the counts, which keeps an empty count from
dividing by zero and shifts every figure a little: one description without a hallucinated
noun has Hal 0.1, not 0):
    CHAIR = hallucinated nouns / nouns
    Cover = covered truth entries / truth entries
    Hal   = 100 - descriptions without a hallucinated noun / descriptions
    Cog   = named hallu entries / hallu entries
Without en_core_web_lg, similarity is exact equality (spaCy gives 1 to the same word): steps 3
and 4 add nothing, so nouns that only a synonym would have matched count as hallucinated; the
figures say so (``amber/synonyms``). Without nltk's data (tagger, WordNet), the nouns come from
built-in rules, said as ``amber/nouns`` (see ``rule_nouns``).

Discriminative (a yes/no question): AMBER counts a response only when it is exactly "Yes" or
"No", and SymMPO's released evaluation (script/eval/eval_amber.sh) gives it the model's answer,
stripped, as it is: ``--amber-parse exact``, the default, does the same, so "Yes, there is." is
neither (wrong either way, and not a "No"). ``--amber-parse standard|strict`` reads the answer as
POPE's are read instead (for models that answer in sentences; a deviation, named in eval.json's
options) and gives AMBER "Yes", "No" or, unread, nothing. "No" is the positive
class: precision = right "No"s / "No"s said, recall = right "No"s / questions whose truth is
"no", accuracy = right answers / questions, each count starting at metrics.txt's 0.001.
F1 = 2PR / (P + R + eps) on P and R already rounded, with eps 0.001 for existence and 0.0001
elsewhere. Attribute adds the state, number and action counts (their three 0.001 starts
included). Existence questions are all "no" in the released data (precision is 100 once a
"No" is said). As AMBER does with evaluation type ``a`` or ``d``, the overall discriminative
figures appear when the queries hold all three dimensions; a group with no question is left out
(AMBER prints 0 for it). The AMBER score of the paper, (100 - CHAIR + F1) / 2, is not computed
by inference.py, nor here.
"""
import functools
import os
import warnings

from mmpo.cli import UserError
from mmpo.common.util import read_json
from mmpo.evaluation.metrics import parse_yes_no

SIMILARITY = 0.8  # inference.py's --similarity_score
SPACY_MODEL = "en_core_web_lg"
# annotation type -> (group, prefix of AMBER's counters); any other type is a relation question
TYPES = {"discriminative-hallucination": ("existence", "ha"), "discriminative-attribute-state": ("state", "as"),
         "discriminative-attribute-number": ("number", "an"), "discriminative-attribute-action": ("action", "aa")}
RELATION = ("relation", "asso")
COUNTS = ("correct_score", "correct_num", "no_score", "no_num", "ans_no_score", "ans_no_num")
COUNTERS = ["chair_score", "chair_num", "safe_cover_score", "safe_cover_num", "hallu_cover_score", "hallu_cover_num",
            "non_hallu_score", "non_hallu_num"] + [f"{p}qa_{c}" for p in ("", "as_", "an_", "aa_", "asso_", "ha_")
                                                   for c in COUNTS]


# ---- the AMBER folder ---------------------------------------------------------------------------

def _load_json(path: str, hint: str = " (give --amber-folder, AMBER's checkout)"):
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file{hint}")
    return read_json(path)


def _first(problems: list[str]):
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


def _words(value) -> bool:
    return isinstance(value, list) and all(isinstance(w, str) for w in value)


@functools.cache
def read_folder(folder: str) -> dict:
    """AMBER's data files in ``folder`` (the checkout), checked: {"annotations": list,
    "association": {word: [words]}, "vocabulary": its keys and words, "safe_words": [words],
    "counters": {name: start}}. Each problem is a one-line UserError naming the file and field."""
    data = os.path.join(folder, "data")
    association = _load_json(path := os.path.join(data, "relation.json"))
    if not isinstance(association, dict) or not all(_words(v) for v in association.values()):
        raise UserError(f"{path}: expected an object of word lists, as {{\"person\": [\"man\", \"woman\"]}}")
    annotations = _load_json(path := os.path.join(data, "annotations.json"))
    if not isinstance(annotations, list):
        raise UserError(f"{path}: expected a list of annotations")
    problems = []
    for i, a in enumerate(annotations):
        where = f"{path}: entry {i + 1}"
        if not isinstance(a, dict) or not isinstance(a.get("type"), str):
            problems.append(f"{where}: field 'type': missing")
        elif a["type"] == "generative":
            for field in ("truth", "hallu"):
                if not _words(a.get(field)):
                    problems.append(f"{where}: field '{field}': must be a list of words")
                elif unknown := [w for w in a[field] if w not in association]:
                    problems.append(f"{where}: field '{field}': {unknown[0]!r} is not a word of relation.json")
        elif a.get("truth") not in ("yes", "no"):
            problems.append(f"{where}: field 'truth': must be \"yes\" or \"no\", got {a.get('truth')!r}")
    _first(problems)
    path = os.path.join(data, "safe_words.txt")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (give --amber-folder, AMBER's checkout)")
    with open(path, encoding="utf-8") as f:
        safe_words = [line.split("\n")[0] for line in f]  # as AMBER reads it: a trailing space stays
    vocabulary = set(association) | {w for words in association.values() for w in words}
    return {"annotations": annotations, "association": association, "vocabulary": vocabulary, "safe_words": safe_words,
            "counters": _read_counters(os.path.join(data, "metrics.txt"))}


def _read_counters(path: str) -> dict[str, float]:
    """metrics.txt's ``name=value`` lines (AMBER evals each value; we read numbers only)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (give --amber-folder, AMBER's checkout)")
    counters = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.strip().split("=")
            if len(parts) == 2:  # AMBER skips any other line
                try:
                    counters[parts[0].strip()] = float(parts[1].strip())
                except ValueError:
                    raise UserError(f"{path}:{n}: {parts[0].strip()}: not a number") from None
    if missing := [c for c in COUNTERS if c not in counters]:
        raise UserError(f"{path}: no value for {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return counters


def default_folder(query_file: str) -> str:
    """The AMBER checkout a query file lies in: DIR for DIR/data/query/query_all.json."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(query_file))))


def read_queries(path: str, folder: str, images: str) -> list[dict]:
    """An AMBER query file (a JSON list of {"id", "image", "query"}) as eval.py's benchmark rows,
    each with its annotation: {"id", "image" (the path in ``images``), "prompt", "group"
    ("generative", "existence", "state", "number", "action" or "relation"), "truth", and for
    a description "hallu"}."""
    annotations = read_folder(folder)["annotations"]
    queries = _load_json(path, "")
    if not isinstance(queries, list) or not queries:
        raise UserError(f"{path}: expected a non-empty list of AMBER queries {{\"id\", \"image\", \"query\"}}")
    rows, seen, problems, missing = [], set(), [], []
    for n, q in enumerate(queries, 1):
        where = f"{path}: query {n}"
        if not isinstance(q, dict):
            problems.append(f"{where}: expected an object {{\"id\", \"image\", \"query\"}}")
            continue
        i, image, query = q.get("id"), q.get("image"), q.get("query")
        if not isinstance(i, int) or isinstance(i, bool) or not 1 <= i <= len(annotations):
            problems.append(f"{where}: field 'id': must be a whole number from 1 to {len(annotations)} "
                            f"(annotations.json's entries), got {i!r}")
        elif i in seen:
            problems.append(f"{where}: field 'id': {i} twice")
        elif not isinstance(image, str) or not image:
            problems.append(f"{where}: field 'image': must be a file name")
        elif not isinstance(query, str) or not query.strip():
            problems.append(f"{where}: field 'query': must be a non-empty string")
        else:
            seen.add(i)
            a = annotations[i - 1]
            full = os.path.join(images, image)
            if not os.path.isfile(full):
                missing.append(full)
            group = "generative" if a["type"] == "generative" else TYPES.get(a["type"], RELATION)[0]
            rows.append({"id": i, "image": full, "prompt": query, "group": group, "truth": a["truth"],
                         **({"hallu": a["hallu"]} if group == "generative" else {})})
    _first(problems)
    if missing:
        raise UserError(f"{missing[0]}: image file not found" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                        + "; give --amber-images, the folder of AMBER's images")
    return rows


# ---- nouns: nltk, or built-in rules ------------------------------------------------------------

@functools.cache
def nltk_nouns():
    """AMBER's noun extraction with nltk, when nltk and its data (tokenizer, tagger, WordNet) are
    installed; else None. Never downloads."""
    try:
        import nltk
        from nltk.stem import WordNetLemmatizer
        lemmatizer = WordNetLemmatizer()
        lemmatizer.lemmatize("dogs")
        nltk.pos_tag(nltk.word_tokenize("A dog."))
    except Exception:  # absent, or a LookupError for missing data
        return None

    def nouns(text: str) -> list[str]:
        return [lemmatizer.lemmatize(w) for w, pos in nltk.pos_tag(nltk.word_tokenize(text)) if pos.startswith("NN")]
    return nouns


# WordNet's answer for every inflection of an AMBER word (WordNetLemmatizer: the shortest WordNet
# noun among the word and its forms by the morphological rules or exceptions), from the lists of
# WordNet 3.0 (noun.exc) and 3.1 (the noun lemmas; nltk reads 3.0):
# the exceptions that reach an AMBER word,
WORDNET_EXCEPTIONS = {"bookshelves": ["bookshelf"], "busses": ["bus"], "camerae": ["camera"], "children": ["child"],
                      "cola": ["colon"], "fishes": ["fish"], "geese": ["goose"], "knives": ["knife"],
                      "leaves": ["leaf", "leave"], "men": ["man"], "mice": ["mouse"], "potatoes": ["potato"],
                      "scarves": ["scarf"], "shelves": ["shelf"], "tomatoes": ["tomato"]}
# the words of relation.json that are no WordNet noun (lemmatized to themselves, never reached),
NOT_IN_WORDNET = {"TV", "air-conditioning", "baconic", "bedsheet", "cann", "cathole", "chopsticks", "closestool",
                  "cooktop", "doghole", "e-book", "earing", "earrings", "ebook", "electrombile", "hot", "kiwifruit",
                  "paraglider", "pissoir", "rpoe", "sanitizer", "scoon", "seegull", "showerpuff", "slippers",
                  "streetlamp", "waterfont"}
# and the WordNet nouns that win over an AMBER word: "men" stays "men", "vases" is "vas".
WORDNET_WINNERS = {"chopstick", "earring", "leaf", "men", "slipper", "sunglass", "vas"}
_SUFFIXES = [("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
             ("men", "man"), ("ies", "y")]


def lemma(word: str, vocabulary) -> str:
    """WordNetLemmatizer's noun lemma of ``word`` wherever it can be a word of ``vocabulary``
    (AMBER's; elsewhere the word itself or a plural stripped): the shortest of the word and
    its forms that WordNet knows, the word itself if none."""
    forms = WORDNET_EXCEPTIONS.get(word) or [word[:-len(old)] + new for old, new in _SUFFIXES if word.endswith(old)]
    known = [f for f in dict.fromkeys([word, *forms])
             if (f in vocabulary and f not in NOT_IN_WORDNET) or f in WORDNET_WINNERS]
    return min(known, key=len) if known else word


def rule_nouns(text: str, vocabulary) -> list[str]:
    """The nouns of ``text`` that are words of ``vocabulary``, without nltk: its words as
    mmpo.common.tagging splits them (letters only, a possessive 's dropped, case kept), each
    a noun where those rules tag it one (``tagging.pos_tags(text, "rules")``, made to agree with
    nltk's tagger; a word of capitals such as "TV" is a noun too), lemmatized as WordNet does
    for AMBER's words (``lemma``). Known misses: hyphenated words ("e-book": the rules read "book"), and wherever
    the rules and nltk's tagger disagree on a word's part of speech: on 40 sample descriptions
    they found the same AMBER nouns in 36, the other 4 being the tagger's slips ("a towel hangs
    on the wall": towel an adjective, hangs a plural noun)."""
    from mmpo.common import tagging
    spellings = tagging.tokenize(text)[1]
    tags = tagging.pos_tags(text, "rules")
    nouns = [lemma(s, vocabulary) for s, t in zip(spellings, tags) if t == "N" or (len(s) > 1 and s.isupper())]
    return [n for n in nouns if n in vocabulary]


def noun_reader(vocabulary, use_nltk: bool = True):
    """(nouns of a text, label): nltk where installed with its data, else the rules."""
    found = nltk_nouns() if use_nltk else None
    if found is not None:
        return found, "nltk"
    return functools.partial(rule_nouns, vocabulary=vocabulary), "rules (deviation: nltk or its data missing)"


# ---- similar words: spaCy, or exact ------------------------------------------------------------

@functools.cache
def spacy_similarity():
    """spaCy's en_core_web_lg similarity of two words (each parsed once), or None without it."""
    try:
        import spacy
        nlp = spacy.load(SPACY_MODEL)
    except Exception:  # spaCy absent, or its model
        return None
    doc = functools.cache(nlp)

    def similarity(a: str, b: str) -> float:
        with warnings.catch_warnings():  # AMBER silences spaCy's warning on words without a vector
            warnings.simplefilter("ignore", UserWarning)
            return doc(a).similarity(doc(b))
    return similarity


def similar_words(use_spacy: bool = True):
    """(are two words similar, label): spaCy's similarity > 0.8, else exact equality."""
    sim = spacy_similarity() if use_spacy else None
    if sim is not None:
        return (lambda a, b: sim(a, b) > SIMILARITY), f"spaCy {SPACY_MODEL} > {SIMILARITY}"
    return (lambda a, b: a == b), f"exact only (deviation: no spaCy {SPACY_MODEL})"


# ---- the figures ----------------------------------------------------------------------------------

def judge_description(nouns: list[str], truth: list[str], hallu: list[str], folder: dict, similar) -> dict:
    """One description's nouns against its image's lists, step by step as AMBER (the module's
    docstring): the nouns kept ("nouns"), which of them are hallucinated ("hallucinated", a flag
    each), which truth and hallu entries are covered / named ("covered", "named", a flag each)."""
    association = folder["association"]
    kept = [n for n in nouns if n in folder["vocabulary"]]
    # (word, entry index): each entry's associated words in turn, then the entries themselves
    safe = [(w, i) for i, t in enumerate(truth) for w in association[t]] + [(t, i) for i, t in enumerate(truth)]
    ha = [(w, i) for i, h in enumerate(hallu) for w in association[h]] + [(h, i) for i, h in enumerate(hallu)]
    covered, named, flags = [False] * len(truth), [False] * len(hallu), []
    for noun in kept:
        if noun in folder["safe_words"]:
            flags.append(False)
            continue
        exact = next((i for w, i in safe if w == noun), None)
        if exact is not None:
            covered[exact] = True
            flags.append(False)
            continue
        exact = next((i for w, i in ha if w == noun), None)
        if exact is not None:
            named[exact] = True
        like = next((i for w, i in ha if similar(noun, w)), None)
        if like is not None:
            named[like] = True
        like = next((i for w, i in safe if similar(noun, w)), None)
        if like is not None:
            covered[like] = True
        flags.append(like is None)
    return {"nouns": kept, "hallucinated": flags, "covered": covered, "named": named}


AMBER_PARSERS = ("exact", "standard", "strict")


def read_answer(text: str, parse: str = "exact") -> str | None:
    """A generated answer as AMBER's response: "Yes", "No", or None (unread). ``exact``: the
    stripped answer itself, as SymMPO's evaluation gives it; else POPE's reading (``parse``)."""
    if parse == "exact":
        return text.strip() if text.strip() in ("Yes", "No") else None
    said = parse_yes_no(text, parse)
    return None if said is None else said.capitalize()


def _pct(score: float, num: float) -> float:
    return round(score / num * 100, 1)


def _f1(p: float, r: float, eps: float) -> float:
    return round(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + eps) * 100, 1)


def _group(c: dict, prefixes: tuple[str, ...], eps: float) -> dict:
    """Accuracy, precision, recall, F1 of the counters of ``prefixes`` added up in AMBER's order."""
    def total(name):  # 0 + a + b + c: the same float as AMBER's a + b + c
        return sum(c[f"{p}qa_{name}"] for p in prefixes)
    p, r = _pct(total("ans_no_score"), total("ans_no_num")), _pct(total("no_score"), total("no_num"))
    return {"accuracy": _pct(total("correct_score"), total("correct_num")), "precision": p, "recall": r,
            "f1": _f1(p, r, eps)}


def amber(rows: list[dict], responses: list, folder: dict, similar) -> tuple[dict, list[dict]]:
    """AMBER's figures (in percent, as inference.py prints them) and each row's details.
    ``responses``: per row, a description's nouns (a list of lemmas) or a yes/no question's
    response ("Yes", "No" or None)."""
    c = dict(folder["counters"])
    details, groups = [], {}
    for row, response in zip(rows, responses, strict=True):
        g = row["group"]
        groups[g] = groups.get(g, 0) + 1
        if g == "generative":
            d = judge_description(response, row["truth"], row["hallu"], folder, similar)
            c["chair_score"] += sum(d["hallucinated"])
            c["chair_num"] += len(d["hallucinated"])
            c["safe_cover_score"] += sum(d["covered"])
            c["safe_cover_num"] += len(d["covered"])
            c["hallu_cover_score"] += sum(d["named"])
            c["hallu_cover_num"] += len(d["named"])
            c["non_hallu_score"] += not any(d["hallucinated"])
            c["non_hallu_num"] += 1
            details.append({"nouns": d["nouns"], "hallucinated": [n for n, f in zip(d["nouns"], d["hallucinated"]) if f]})
            continue
        prefix = dict(TYPES.values()).get(g, RELATION[1]) + "_"
        yes, said_no = row["truth"] == "yes", response == "No"
        for p in ("", prefix):
            c[f"{p}qa_correct_num"] += 1
            c[f"{p}qa_correct_score"] += response == "Yes" if yes else said_no
            if not yes:
                c[f"{p}qa_no_num"] += 1
                c[f"{p}qa_no_score"] += said_no
            if said_no:
                c[f"{p}qa_ans_no_num"] += 1
                c[f"{p}qa_ans_no_score"] += not yes
        details.append({"read": response, "correct": response == row["truth"].capitalize()})
    out = {"examples": len(rows)}
    if groups.get("generative"):
        out.update({"generative/examples": groups["generative"],
                    "generative/chair": _pct(c["chair_score"], c["chair_num"]),
                    "generative/cover": _pct(c["safe_cover_score"], c["safe_cover_num"]),
                    "generative/hal": round(100 - c["non_hallu_score"] / c["non_hallu_num"] * 100, 1),
                    "generative/cog": _pct(c["hallu_cover_score"], c["hallu_cover_num"]),
                    "generative/nouns": sum(len(d["nouns"]) for d in details if "nouns" in d)})
    asked = sum(n for g, n in groups.items() if g != "generative")
    attribute = sum(groups.get(g, 0) for g in ("state", "number", "action"))
    if asked:
        out.update({"discriminative/examples": asked,
                    "discriminative/unread": sum(d.get("read", "") is None for d in details)})
        if groups.get("existence") and attribute and groups.get("relation"):
            out.update({f"discriminative/{k}": v for k, v in _group(c, ("",), 0.0001).items()})
    sections = [("existence", ("ha_",), 0.001, groups.get("existence", 0)),
                ("attribute", ("as_", "an_", "aa_"), 0.0001, attribute),
                *[(f"attribute/{g}", (dict(TYPES.values())[g] + "_",), 0.0001, groups.get(g, 0))
                  for g in ("state", "number", "action")],
                ("relation", ("asso_",), 0.0001, groups.get("relation", 0))]
    for name, prefixes, eps, n in sections:
        if n:
            out.update({f"{name}/examples": n, **{f"{name}/{k}": v for k, v in _group(c, prefixes, eps).items()}})
    return out, details


def evaluate(rows: list[dict], answers: list[str], folder: dict, parse: str = "exact",
             nouns=None, similar=None) -> tuple[dict, list[dict]]:
    """AMBER on generated answers: each description's nouns (``nouns``: text -> lemmas; default
    nltk, else the rules) and each yes/no answer read by ``parse``; ``similar`` (two words ->
    bool; default spaCy's, else exact). The figures say which noun reader and similarity ran
    when they are the defaults."""
    labels = {}
    if any(r["group"] == "generative" for r in rows):
        if nouns is None:
            nouns, labels["nouns"] = noun_reader(folder["vocabulary"])
        if similar is None:
            similar, labels["synonyms"] = similar_words()
    responses = [nouns(a) if r["group"] == "generative" else read_answer(a, parse) for r, a in zip(rows, answers)]
    figures, details = amber(rows, responses, folder, similar)
    return {**figures, **labels}, details
