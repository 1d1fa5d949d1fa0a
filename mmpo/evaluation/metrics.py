"""The evaluation's metrics as pure functions of log-probs, answers and labels (no model, no I/O,
no torch): preference and image reliance from summed log-probs; CHAIR (Rohrbach et al. 2018,
https://arxiv.org/abs/1809.02156) and POPE (Li et al. 2023, https://arxiv.org/abs/2305.10355) on
generated answers, by the rules of the reference code that papers run. Where a reference divides
by zero (no mention, no true object, no "yes") we report 0.

CHAIR follows ``utils/chair.py`` of github.com/LisaAnne/Hallucination (Python 2) and its Python 3
port ``chair.py`` of github.com/Maxlinn/CHAIR-metric-standalone, which most LVLM papers run: the
same synonym list, rules, CHAIR_s and CHAIR_i; the port adds recall, which we follow. An answer's
objects are found by the reference's rules, in its order:
  1. lower-case, split into words as current nltk's ``word_tokenize`` does (older releases keep
     "**dog**" whole): "dog's" -> dog 's; "dog/cat" and "hot-dog" stay one word, and are no object,
  2. singularize as pattern.en (2.6 or 3.6 alike for object words), quirks included: any final s
     is stripped, so "bus" becomes "bu" and only "buses" counts as a bus; "doggies", "collies" and
     "canoes" count as nothing; "people", "men", "children", "geese", "mice", "knives" count,
  3. join two-word names, left to right, each word in at most one pair (``DOUBLE_WORDS``):
     "hot dog" is no dog, "teddy bear" no bear, "baby dog" / "adult dog" a dog (not a person),
     "passenger jet" / "passenger train" the vehicle, "toilet seat" a toilet, "bow tie" a tie,
     "train track" and "home plate" nothing, and "motor bike" nothing at all (its synonym-list
     entry has a stray leading space),
  4. when the answer says "toilet", no "seat" in it counts as a chair,
  5. every remaining word of the synonym list (``chair_synonyms.txt``) is one mention of its
     category; every mention counts, repeats included.
    CHAIR_s  = answers with at least one hallucinated mention / answers
    CHAIR_i  = hallucinated mentions / all mentions                (over all answers at once)
    coverage = distinct true categories mentioned / true categories  (the port's "Recall")
An image's true objects are COCO's instance labels plus the objects its five captions mention
(``true_objects``), as in the reference. CHAIR grows with answer length: compare columns and
papers at similar lengths (eval.py reports them). Object HalBench, as RLHF-V, mDPO, MFPO and NaPO
report it, runs another pipeline (a refined synonym list, WordNet, objects extracted by GPT):
figures here match papers that run the reference code, those tables only roughly.

``variant="opera"`` (eval.py ``--chair-variant opera``) reads answers as OPERA's ``chair.py``
(github.com/shikiw/OPERA), which OPERA, HALC (BillChan226/HALC, eval/chair.py) and PAI
(LALBJ/PAI) ran. It is the port above with one change, rule 2: each word gets its Penn Treebank
tag from nltk's ``pos_tag`` (of the lower-cased words, in context) and becomes WordNet's lemma for
that part of speech (adjective, verb, adverb; a noun for any other tag) by nltk's
``WordNetLemmatizer``, which keeps a word WordNet knows. Same synonym list, two-word names, toilet
rule, tokenization and ground truth (the captions' objects read by the same rule). Worked with
nltk 3.8.1 (OPERA's pin), its tagger and WordNet 3.0, against the reference:
  - "bus" is a bus (the reference: "bu", nothing), "doggies" a doggy and "collies" a collie (dogs),
    "canoes" a canoe (a boat), "ties" a tie; "glasses" is still a glass, no object,
  - "men" stays "men", which WordNet also knows as a noun: no person (the reference: "man", a
    person); "women" is a woman, a person in both,
  - verbs become their lemma: "skiing" counts as skis, "seated" as a chair, "boating" as a boat,
    none of which the reference counts.
It needs nltk and two of its data packages (``opera_unavailable`` says which are missing); the
words are split by ``tokenize`` here as for the reference.

POPE asks yes/no questions about objects. ``parse="standard"`` reads answers as POPE's own
``evaluate.py`` (github.com/RUCAIBox/POPE) and LLaVA's ``llava/eval/eval_pope.py`` do: keep the
text before the first ".", drop commas, split on spaces; the answer is "no" if "No", "not" or
"no" is one of those words, otherwise "yes" (so "NO!" reads as yes, as there).
``parse="strict"`` accepts only an answer that starts with yes or no, and counts anything else
as unparsed and wrong.
"""
import json
import os
import re

# ---- preference and image reliance, from summed log-probs {view: (n,) tensor} ------------------

def preference_metrics(logps: dict, ref: dict, negatives: list[str], beta: float) -> dict:
    """Chosen against each negative: log-prob accuracy, and implicit-reward accuracy and margin
    beta * h against the reference ``ref`` (the base model; 0 for the base model itself)."""
    out = {}
    for v in negatives:
        out[f"pref/{v}/logp_acc"] = (logps["chosen"] > logps[v]).float().mean().item()
        h = (logps["chosen"] - ref["chosen"]) - (logps[v] - ref[v])
        out[f"pref/{v}/reward_acc"] = (h > 0).float().mean().item()
        out[f"pref/{v}/reward_margin"] = (beta * h).mean().item()
    return out


def reliance_metrics(kind: str, lp: dict) -> dict:
    """How much the chosen answer depends on the image: on m against m' (``kind``: crop, noise,
    blank); for a blank m', also chosen-over-rejected with the real image (sighted) and without."""
    gap = lp["chosen"] - lp["chosen_on_corrupt"]
    out = {f"reliance/{kind}/cond_acc": (gap > 0).float().mean().item(), f"reliance/{kind}/logp_gap": gap.mean().item()}
    if kind == "blank":
        sighted = (lp["chosen"] > lp["rejected"]).float().mean().item()
        blind = (lp["chosen_on_corrupt"] > lp["rejected_on_corrupt"]).float().mean().item()
        out.update({"reliance/sighted_acc": sighted, "reliance/blind_acc": blind,
                    "reliance/sighted_minus_blind": sighted - blind})
    return out


# ---- CHAIR: the reference's vocabulary and rules -----------------------------------------------

def _read_synonyms(path: str) -> dict[str, str]:
    """Every name of the synonym list -> its category (the first name of its line). Split on ", "
    as the reference does: a name after a double space keeps its leading space and so never
    matches a word (" motor bike", " cheesecake")."""
    names = {}
    with open(path) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                line = line.strip().split(", ")
                names.update({name: line[0] for name in line})
    return names


SYNONYMS: dict[str, str] = _read_synonyms(os.path.join(os.path.dirname(__file__), "chair_synonyms.txt"))
CATEGORIES: list[str] = list(dict.fromkeys(SYNONYMS.values()))  # the 80 COCO categories, in COCO order

# Pairs of (singularized) words read as one: the reference's list of COCO two-word names, each
# standing for itself. Some can never match after singularization ("sports" -> "sport",
# "tennis" -> "tenni", "glass" -> "glas", three-word "stove top oven"); the reference lists them
# all the same, and "ball" / "racket" still count on their own.
_COCO_DOUBLE_WORDS = ["motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
                      "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
                      "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
                      "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
                      "stove top oven", "home plate", "train track"]
_ANIMALS = ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub"]
DOUBLE_WORDS: dict[str, str] = {
    **{w: w for w in _COCO_DOUBLE_WORDS},
    **{f"{age} {a}": a for a in _ANIMALS for age in ("baby", "adult")},
    "passenger jet": "jet", "passenger train": "train",
    "bow tie": "tie", "toilet seat": "toilet",
    "wine glas": "wine glass",  # what "wine glass" singularizes to
}

# Word splitting as nltk's word_tokenize (punkt sentences, then its Treebank rules), limited to
# what can separate a word from its neighbours: punctuation that is split off, a period that ends
# a sentence (not one inside "dog.cat" or "3.5"), commas and colons except inside numbers.
# Checked against nltk 3.10 on random text: only stacks of quotes and punctuation split differently.
_SPLIT_OFF = re.compile(r"\.{2,}"                                          # ellipsis
                        r"|(?<!\.)\.(?!\.)(?=[\]\)}>\"'»”’]*(?:\s|$))"     # sentence-final period
                        r"|[,:](?!\d)|--|''|[;@#$%&?!*()\[\]{}<>\"`«“‘„»”’\u2012-\u2015]")
_OPENING_QUOTE = re.compile(r"(?<!\w)'(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)")  # 'dog -> ' dog
# a closing quote, then one clitic of each kind come off a word's end, in nltk's order:
# "dog's" -> dog 's, "dogs'" -> dogs ', "won't's" -> wo n't 's
_CLITICS = [re.compile(r"(.*[^'])(')"), re.compile(r"(.*[^'])('s|'m|'d|')"), re.compile(r"(.*[^'])('ll|'re|'ve|n't)")]


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation of ``text``, split as nltk's word_tokenize splits them
    (except after an abbreviation, "etc." or "mr.", which is never an object word)."""
    text = _SPLIT_OFF.sub(r" \g<0> ", _OPENING_QUOTE.sub("' ", text.lower()))
    tokens = []
    for chunk in text.split():
        clitics = []
        for clitic in _CLITICS:
            if m := clitic.fullmatch(chunk):
                chunk = m.group(1)
                clitics.insert(0, m.group(2))
        tokens += [chunk, *clitics]
    return tokens


# The reference singularizes every word with pattern.en's singularize. These rules give the same
# result for every word that can become a COCO word or part of a two-word name (checked against
# pattern.en on an English word list); they are not a general English singularizer.
_UNCHANGED = {"scissors"}
_IRREGULAR_ENDINGS = [("children", "child"), ("people", "person"), ("men", "man"), ("geese", "goose"),
                      ("oxen", "ox"), ("mice", "mouse"), ("kine", "cow"),
                      # pattern.en returns these -ie plurals as they are: no dog
                      ("doggies", "doggies"), ("collies", "collies")]
_SUFFIX_RULES = [(re.compile(pattern), replacement) for pattern, replacement in [
    (r"(.)ae$", r"\1a"),                 # Latin plurals: antennae
    (r"buses$", "bus"),
    (r"(x|ch|ss|sh)es$", r"\1"),          # boxes, benches, glasses, toothbrushes
    (r"oes$", "o"),                       # so "canoes" -> "cano", as in the reference
    (r"([^aeiouy]|qu)ies$", r"\1y"),      # ponies, puppies, ladies (and "ties" -> "ty")
    (r"([nlw]i)ves$", r"\1fe"),           # knives
    (r"([aeo]l)ves$", r"\1f"),            # calves
    (r"s$", ""),                          # any other final s: dogs, skis, and "bus" -> "bu"
]]


def singularize(word: str) -> str:
    """The singular the CHAIR reference gives a lower-case word ("knives" -> "knife")."""
    if word in _UNCHANGED:
        return word
    for ending, singular in _IRREGULAR_ENDINGS:
        if word.endswith(ending):
            return word[:len(word) - len(ending)] + singular
    for pattern, replacement in _SUFFIX_RULES:
        if pattern.search(word):
            return pattern.sub(replacement, word)
    return word


# ---- OPERA's variant: nltk's part-of-speech tags and WordNet's lemmas instead of singularize ----

CHAIR_VARIANTS = ("reference", "opera")
_WORDNET_POS = {"J": "a", "V": "v", "R": "r"}  # OPERA's get_wordnet_pos: wordnet.ADJ, VERB, ADV; else NOUN ("n")
# what a fresh nltk (3.9 or later) calls the data the opera variant needs (OPERA's pin, 3.8.1, calls
# its tagger averaged_perceptron_tagger)
_NLTK_DATA = "averaged_perceptron_tagger_eng wordnet"


def opera_lemmas(words: list[str]) -> list[str]:
    """OPERA's reading of lower-cased words: each tagged in context by nltk's ``pos_tag``, then
    lemmatized by WordNet for that part of speech ("skiing" VBG -> "ski", "buses" NNS -> "bus")."""
    import nltk  # only here: the reference variant needs no nltk
    lemmatizer = nltk.stem.WordNetLemmatizer()
    return [lemmatizer.lemmatize(w, _WORDNET_POS.get(tag[:1], "n")) for w, tag in nltk.pos_tag(words)] if words else []


def opera_unavailable() -> str | None:
    """Why the opera variant cannot run here, as one line with the commands that fix it (nltk, or
    its tagger or WordNet, missing); None when it can."""
    try:
        import nltk
    except ImportError:
        return f"--chair-variant opera needs nltk, which is not installed: pip install nltk && " \
               f"python -m nltk.downloader {_NLTK_DATA}"
    missing = []
    for probe in (lambda: nltk.pos_tag(["dogs"]), lambda: nltk.stem.WordNetLemmatizer().lemmatize("dogs", "n")):
        try:
            probe()
        except LookupError as e:  # nltk's message names the package: >>> nltk.download('wordnet')
            m = re.search(r"nltk\.download\('([^']+)'\)", str(e))
            missing.append(m.group(1) if m else str(e).strip().splitlines()[0])
    if missing:
        return f"--chair-variant opera needs nltk's data, not found here: python -m nltk.downloader {' '.join(missing)}"
    return None


def object_words(text: str, variant: str = "reference") -> list[tuple[str, str]]:
    """(word as read, COCO category) for every object mention in ``text``, in order, repeats
    included: "Two dogs and a puppy." -> [("dog", "dog"), ("puppy", "dog")]. ``variant``: the
    reference's rules, or OPERA's (its lemmas in place of singularize)."""
    if variant not in CHAIR_VARIANTS:
        raise ValueError(f"variant must be one of {CHAIR_VARIANTS}, not {variant!r}")
    words = opera_lemmas(tokenize(text)) if variant == "opera" else [singularize(w) for w in tokenize(text)]
    joined, i = [], 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if pair in DOUBLE_WORDS:
            joined.append(DOUBLE_WORDS[pair])
            i += 2
        else:
            joined.append(words[i])
            i += 1
    if "toilet" in joined:  # "the seat of the toilet" is no chair
        joined = [w for w in joined if w != "seat"]
    return [(w, SYNONYMS[w]) for w in joined if w in SYNONYMS]


def object_mentions(text: str, variant: str = "reference") -> list[str]:
    return [category for _, category in object_words(text, variant)]


# every name as written, for ground truth (where " motor bike" and "iPhone" are plain names)
_GROUND_TRUTH_NAMES = {name.strip().lower(): category for name, category in SYNONYMS.items()}


def to_category(name: str) -> str:
    """A ground-truth object name -> its COCO category: any name of the synonym list ("bus",
    "motor bike", "sofa"), or a phrase in which the answer rules find one category ("buses",
    "toilet seat"). Anything else is a ValueError."""
    name = " ".join(name.lower().split())
    if name in _GROUND_TRUTH_NAMES:
        return _GROUND_TRUTH_NAMES[name]
    found = set(object_mentions(name))
    if len(found) != 1:
        raise ValueError(f"{name!r} is not one of the 80 COCO objects or their synonyms")
    return found.pop()


def chair_answer(text: str, truth: list[str], variant: str = "reference") -> dict:
    """One answer against its image's true objects (names that ``to_category`` reads): the
    category of every mention in order ("objects"), those not in the image ("hallucinated"),
    and the true categories ("truth")."""
    true = sorted({to_category(t) for t in truth})
    said = object_mentions(text, variant)
    return {"objects": said, "hallucinated": [c for c in said if c not in true], "truth": true}


def true_objects(row: dict, variant: str = "reference") -> list[str]:
    """A CHAIR row's ``objects``, plus every object its reference ``captions`` mention (read by
    the same ``variant`` as the answers, as each reference code reads them)."""
    return row["objects"] + [c for caption in row.get("captions", []) for c in object_mentions(caption, variant)]


def chair(answers: list[str], truths: list[list[str]], variant: str = "reference") -> dict:
    """CHAIR_s, CHAIR_i and coverage, with the mention counts behind them."""
    judged = [chair_answer(a, t, variant) for a, t in zip(answers, truths, strict=True)]
    mentions = sum(len(j["objects"]) for j in judged)
    hallucinated = sum(len(j["hallucinated"]) for j in judged)
    true = sum(len(j["truth"]) for j in judged)
    covered = sum(len(set(j["truth"]).intersection(j["objects"])) for j in judged)
    return {"chair_s": sum(bool(j["hallucinated"]) for j in judged) / max(1, len(judged)),
            "chair_i": hallucinated / max(1, mentions), "coverage": covered / max(1, true),
            "mentions": mentions, "hallucinated": hallucinated, "answers": len(judged)}


# ---- POPE ---------------------------------------------------------------------------------------

POPE_PARSERS = ("standard", "strict")


def parse_yes_no(text: str, parse: str = "standard") -> str | None:
    """'yes' / 'no' read from a free-form answer; None only under ``parse="strict"``."""
    if parse == "standard":
        words = text.split(".")[0].replace(",", "").split(" ")  # the first sentence, as the reference
        return "no" if {"No", "not", "no"}.intersection(words) else "yes"
    if parse == "strict":
        m = re.match(r"\W*(yes|no)\b", text.lower())
        return m.group(1) if m else None
    raise ValueError(f"parse must be one of {POPE_PARSERS}, not {parse!r}")


def pope(answers: list[str], labels: list[str], parse: str = "standard") -> dict:
    """Accuracy, precision, recall, F1 (positive = yes) and yes-ratio of ``answers`` against
    ``labels`` ('yes'/'no'). Unparsed answers (strict parser only) are wrong and reported."""
    bad = sorted({str(y) for y in labels} - {"yes", "no"})
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {', '.join(map(repr, bad[:3]))}")
    parsed = [parse_yes_no(a, parse) for a in answers]
    pairs = list(zip(parsed, labels, strict=True))
    tp = sum(p == "yes" and y == "yes" for p, y in pairs)
    fp = sum(p == "yes" and y == "no" for p, y in pairs)
    fn = sum(p != "yes" and y == "yes" for p, y in pairs)
    correct = sum(p == y for p, y in pairs)
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    return {"accuracy": correct / max(1, len(labels)), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(1e-12, precision + recall),
            "yes_ratio": parsed.count("yes") / max(1, len(labels)), "unparsed": parsed.count(None),
            "answers": len(labels)}


# ---- short answers with a closed set of options ------------------------------------------------

def read_option(text: str, options: list[str]) -> str | None:
    """The option (as written in ``options``) that a short answer gives, or None when it names
    none. Each option is looked for in the lower-cased answer as a whole word or phrase, its words
    separated by any spacing ("reddish" is no "red", "dark  red" is "dark red"); the one found
    first wins ("The circle is red, not blue." -> red), and of two found at the same place, the
    longer ("dark red" over "dark"). Options are not blank and differ in more than case and spacing."""
    lowered, found = text.lower(), []
    for option in options:
        words = option.lower().split()
        if not words:
            raise ValueError(f"a blank option: {option!r}")
        m = re.search(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", lowered)
        if m:
            found.append((m.start(), -len(" ".join(words)), option))
    return min(found, key=lambda f: f[:2])[2] if found else None


def qa_choices(row: dict) -> list[str]:
    """What a QA answer is read against: the row's options, else its answer and its prior."""
    if row.get("options") is not None:
        return row["options"]
    return list(dict.fromkeys(x for x in (row["answer"], row.get("prior")) if x is not None))


def qa_metrics(rows: list[dict], reads: list[str | None]) -> dict:
    """Accuracy (read == answer) and the share of answers naming no option; over the rows whose
    prior is not their answer, how many there are and how often the prior was read."""
    n = len(rows)
    m = {"examples": n, "accuracy": sum(x == r["answer"] for r, x in zip(rows, reads)) / max(1, n),
         "unread": reads.count(None) / max(1, n)}
    tempted = [x == r["prior"] for r, x in zip(rows, reads) if r.get("prior") not in (None, r["answer"])]
    if tempted:
        m["prior_examples"], m["prior_rate"] = len(tempted), sum(tempted) / len(tempted)
    return m


# ---- the labels of each benchmark's rows --------------------------------------------------------

def label_problems(kind: str, row: dict) -> list[str]:
    """What is wrong with the labels of a benchmark row (``kind``: chair, pope or qa), each as
    "field 'x': what": CHAIR's objects (names ``to_category`` reads) and captions, POPE's yes/no
    answer, QA's answer, options, group and prior (null is absent)."""
    problems = []
    if kind == "chair":
        objs, captions = row.get("objects"), row.get("captions", [])
        if not isinstance(objs, list) or not all(isinstance(o, str) for o in objs):
            problems.append("field 'objects': must be a list of object names")
            objs = []
        for o in objs:
            try:
                to_category(o)
            except ValueError as e:
                problems.append(f"field 'objects': {e}")
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            problems.append("field 'captions': must be a list of captions")
    elif kind == "pope" and row.get("answer") not in ("yes", "no"):
        problems.append("field 'answer': must be \"yes\" or \"no\"")
    elif kind == "qa":
        problems += _qa_problems(row)
    return problems


def _qa_problems(row: dict) -> list[str]:
    def text(v) -> bool:
        return isinstance(v, str) and bool(v.strip())
    problems = []
    answer, options, group, prior = (row.get(k) for k in ("answer", "options", "group", "prior"))
    if answer is None:
        problems.append("field 'answer': missing")
    elif not text(answer):
        problems.append("field 'answer': must be a non-empty string")
    if options is not None:
        if not isinstance(options, list) or not all(text(o) for o in options):
            problems.append("field 'options': must be a list of non-empty strings")
            options = None
        else:
            seen = {}  # options are read whatever their case and spacing (read_option): "Red" is "red"
            for o in options:
                key = " ".join(o.lower().split())
                if key in seen:
                    shown = [json.dumps(x, ensure_ascii=False) for x in (seen[key], o)]
                    problems.append(f"field 'options': {shown[0]} twice" if seen[key] == o else
                                    f"field 'options': {shown[0]} and {shown[1]} read alike")
                seen.setdefault(key, o)
            if text(answer) and answer not in options:
                problems.append(f"field 'options': must contain the answer {json.dumps(answer, ensure_ascii=False)}")
    if group is not None and not text(group):
        problems.append("field 'group': must be a non-empty string")
    if prior is not None:
        if not text(prior):
            problems.append("field 'prior': must be a non-empty string")
        elif options is not None and prior not in options:
            problems.append(f"field 'prior': {json.dumps(prior, ensure_ascii=False)} is not one of the options")
    return problems
