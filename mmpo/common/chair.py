"""CHAIR (Rohrbach et al. 2018, https://arxiv.org/abs/1809.02156) on generated answers, as a pure
function of answers and true objects (no model, no I/O, no torch), by the rules of the reference
code that papers run. Where the reference divides by zero (no mention, no true object) we report 0.

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
"""
import os
import re

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
