"""The chosen answer's words for MFPO's keyword ranking (keywords.py): tokens, part-of-speech
tags (nouns, adjectives) and stems. Pure Python; uses nltk's tagger and Porter stemmer only when
nltk is installed with the tagger's data (never required, never downloaded), else built-in rules
that give the same answer on every machine.
"""
import functools
import re

STOPWORDS = set("""
a an the this that these those there here it its it's they them their he him his she her hers we us our you your i
me my is are was were be been being am do does did doing have has had having will would can could should may might
must shall of in on at to from by with without for about above below over under into onto out up down off near next
beside besides behind between among through across along around against toward towards before after during while
past beneath underneath atop
within upon via than then and or but nor so yet if because as not no also too very just only quite rather really
some any each every all both either neither many much more most few several other others another such what which who whom
whose where when why how one two three four five six seven eight nine ten first second third image picture photo
shows show showing seen see appears appear looks look visible left right top bottom middle center front back side
""".split())

# Never the object: sizes, colors, textures, positions.
ADJECTIVES = set("""
big small large little tiny huge tall short long wide narrow old new young bright dark light heavy empty full open
closed round flat wooden metal plastic red green blue yellow orange purple pink brown black white gray grey
silver golden gold beige colorful striped patterned clear cloudy sunny various nearby together alive
""".split())

# Adjectives that are also object nouns: which one, ``pos_tags`` decides from the phrase.
NOUN_ADJECTIVES = set("light metal plastic gold silver orange".split())

# Verbs of image descriptions that (almost) never name an object: never a keyword.
VERBS = set("""
sits sitting sit stands standing stand lies lying lie holds holding hold wears wearing wear rests resting rest hangs
hanging hang walks walking walk runs running run plays playing play eats eating eat looks looking contains containing
placed located positioned covered filled made displayed parked flying floating leaning surrounded seems seem
rides ride carries carry grazes graze jumps jump throws throw catches grabs grab lifts lift pulls pushes drives
waits wait leans lean lays lay includes depicts features smiles smile laughs sleeps sleep swims swim climbs climb
chases chase follows follow feeds hugs kisses bites licks chews sniffs barks purrs meows chirps perches gazes stares
glances reaches reach sips enjoys enjoy prepares serves crosses opens closes uses pours fills washes cleans dries
relaxes remains overlooks travels approaches appears goes comes come takes take makes make gives give puts put gets
get has talks talk reads writes dances kicks tries try wants want
""".split())

# Two-word object names whose second (or first) word a rule below would reject on its own ("can" is a
# modal, "lift" a verb, "living" an -ing form): the rules tag both words nouns where they stand together.
COMPOUND_NOUNS = {tuple(p.split()) for p in """
living room, dining room, dining table, waiting room, swimming pool, washing machine, sewing machine,
frying pan, ski lift, chair lift, trash can, garbage can, watering can, soda can, paint can, tin can,
fruit flies
""".replace("\n", " ").split(", ")}
# Nouns shorter than the 3 letters ``is_noun`` asks of a word
SHORT_NOUNS = set("tv ox pc".split())

# Verb or object ("a bird flies" / "fruit flies"): a verb unless a determiner, number,
# preposition or possessive comes right before it.
VERBISH = set("flies swings stops floats sails dives works".split())

# Nouns that a suffix rule below would reject.
SUFFIX_NOUNS = set("""
bed shed sled seabed flowerbed hundred building ceiling painting clothing railing awning icing frosting topping
filling stuffing dressing wedding pudding dumpling earring sibling morning evening lightning housing drawing carving
seating siding flooring roofing fencing bedding lighting shelving tiling wiring plumbing parking crossing landing
opening clearing duckling seedling sapling fly butterfly dragonfly firefly belly lily jelly family rally assembly
olive locomotive detective archive beehive adhesive explosive relative native radish relish polish parish finish
varnish
""".split())

DETERMINERS = set("""
a an the this that these those his her its their my your our some any each every no several many few both all
another one two three four five six seven eight nine ten
""".split())
# What may open a verb's object ("rides a horse"); not "that", which mostly opens a clause.
OBJECT_DETERMINERS = DETERMINERS - set("that no all both each every another any one many few".split())
PREPOSITIONS = set("""
of in on at to from by with without for about above below over under into onto out up down off near beside behind
between among through across along around against toward towards before after during within upon via inside outside
past next beneath underneath atop onto
""".split())
SUBJECT_PRONOUNS = set("he she it they who which that someone somebody everyone".split())
SINGULAR = set("a an one this each every".split())  # "a dog skis": never a compound noun, unlike "his tennis shoes"
NLTK_INSTALL = "pip install nltk; python -m nltk.downloader averaged_perceptron_tagger_eng"


def tokenize(text: str) -> tuple[list[str], list[str], list[str], set[int]]:
    """(words, spellings, seps, possessives): lower-case words, their spelling in ``text``, the
    punctuation between word t-1 and word t ("" if none; seps[-1]: after the last word), and the
    indices of words that carried a possessive 's (dropped from the word: "man's hat" -> man, hat)."""
    text = text.replace("\u2019", "'")
    out, spell, seps, poss, sep = [], [], [], set(), ""
    for m in re.finditer(r"([A-Za-z]+(?:'[A-Za-z]+)?)|([.,;:!?()\"])", text):
        if m.group(2):  # a clause break for the context rules
            sep += m.group(2)
            continue
        w = m.group(1)
        if w.lower().endswith("'s"):
            w = w[:-2]
            poss.add(len(out))
        out.append(w.lower())
        spell.append(w)
        seps.append(sep)
        sep = ""
    return out, spell, seps + [sep], poss


def words(text: str) -> list[str]:
    return tokenize(text)[0]


def is_noun(word: str) -> bool:
    """Could ``word`` be an object noun, judged from the word alone (no context)? Stopwords,
    listed verbs and adjectives, and words with a verb or adjective ending are not."""
    if word in SHORT_NOUNS:
        return True
    if word in STOPWORDS or word in ADJECTIVES or word in VERBS or len(word) < 3 or "'" in word:
        return False
    if word in SUFFIX_NOUNS or word.endswith(("fish", "eed")):
        return True
    if word.endswith("ing"):  # running, but not ring, king, thing, string (no vowel before -ing)
        return not re.search(r"[aeiouy]", word[:-3])
    if word.endswith(("ive", "ish")):  # active, reddish, but not hive, dish, fish
        return len(word) <= 5
    return not word.endswith(("ly", "ed", "ous", "ful", "less"))


@functools.cache
def nltk_tagger():
    """nltk.pos_tag when nltk and its tagger data are installed, else None. Never downloads."""
    try:
        import nltk
        nltk.pos_tag(["A", "dog", "runs", "."])  # LookupError when the tagger data is missing
        return nltk.pos_tag
    except Exception:  # an optional helper, broken or absent: fall back to the rules below
        return None


def resolve(tagger: str):
    """nltk's pos_tag for "nltk" (error without it) and for "auto" where installed; None: the rules."""
    if tagger not in ("auto", "nltk", "rules"):
        raise ValueError(f"tagger must be 'auto', 'nltk' or 'rules', not {tagger!r}")
    tag = nltk_tagger() if tagger != "rules" else None
    if tagger == "nltk" and tag is None:
        raise RuntimeError(f"tagger='nltk' needs nltk and its tagger data: {NLTK_INSTALL}")
    return tag


def is_adjective(word: str) -> bool:
    """Could ``word`` be an adjective, judged from the word alone: listed, or an adjective ending."""
    if word in ADJECTIVES:
        return True
    return len(word) > 4 and word.endswith(("ous", "ful", "less", "ive", "ish")) and not is_noun(word)


def pos_tags(text: str, tagger: str = "auto") -> list[str]:
    """Per word of ``words(text)``: "N" (used as a noun here), "A" (an adjective) or "".

    tagger: "auto" (nltk's tagger when installed with its data, else the rules), "nltk" (error
    without it) or "rules" (always the built-in rules, the same on every machine).
    A tagger's nouns stand (only a stop word is never one). Under the rules a word that ``is_noun``
    rejects is never a noun, except in a listed two-word object (COMPOUND_NOUNS: "trash can",
    "ski lift"), whose words are both nouns where they stand together. The rules, per occurrence:
    a VERBISH word (flies, swings) is a verb unless a determiner, number, preposition or possessive
    comes right before it; any other word is a verb in "subject WORD object" shape (the subject a
    pronoun, "to", or a noun opening its clause or after a determiner; the object opening with
    a/an/the/his/her/its/their/some/two..: "a man strums a guitar"), or, ending in -s, after a
    singular subject and before a preposition or the clause's end ("a cat naps on", "she waves.").
    The one exception under the rules: a NOUN_ADJECTIVES word, which ``is_noun`` rejects as an
    adjective, is a noun where it closes a noun phrase ("a traffic light", "made of metal") and an
    adjective elsewhere ("a light blue car", "it is light").
    """
    toks, spell, seps, poss = tokenize(text)
    tag = resolve(tagger)
    if tag is not None:
        seq, where = [], []
        for t, w in enumerate(spell):
            seq += list(seps[t])
            where.append(len(seq))
            seq += [w, "'s"] if t in poss else [w]
        got = [p for _, p in tag(seq + list(seps[-1]))]
        # the tagger's nouns stand (only a stop word is never one); its adjectives, and listed ones
        return ["N" if got[where[t]].startswith("NN") and w not in STOPWORDS else
                "A" if is_adjective(w) or (got[where[t]].startswith("JJ") and w not in STOPWORDS) else ""
                for t, w in enumerate(toks)]
    out = ["N" if _rule_noun(toks, seps, poss, t) else "A" if is_adjective(w) else "" for t, w in enumerate(toks)]
    for t, w in enumerate(toks):
        if w in NOUN_ADJECTIVES:
            before = toks[t - 1] if t > 0 and not seps[t] else None
            opened = before is not None and (before in DETERMINERS or before in PREPOSITIONS or t - 1 in poss or out[t - 1])
            closes = t + 1 == len(toks) or seps[t + 1] or not out[t + 1]
            out[t] = "N" if opened and closes else "A"
    for t in range(1, len(toks)):  # "trash can", "ski lift": one object
        if (toks[t - 1], toks[t]) in COMPOUND_NOUNS and not seps[t] and t - 1 not in poss:
            out[t - 1] = out[t] = "N"
    return out


def noun_flags(text: str, tagger: str = "auto") -> list[bool]:
    """Per word of ``words(text)``: is it used as a noun here? (``pos_tags`` == "N")"""
    return [t == "N" for t in pos_tags(text, tagger)]


def _rule_noun(toks, seps, poss, t) -> bool:
    w = toks[t]
    if not is_noun(w):
        return False

    def before(i):  # the word before the noun phrase ending at i (adjectives skipped); None: clause start
        while i > 0 and not seps[i] and toks[i - 1] in ADJECTIVES:
            i -= 1
        return None if i == 0 or seps[i] else i - 1
    prev = t - 1 if t > 0 and not seps[t] else None  # same clause only
    nxt = toks[t + 1] if t + 1 < len(toks) and not seps[t + 1] else None  # (seps has one more entry)
    if w in VERBISH:
        return prev is not None and (toks[prev] in DETERMINERS or toks[prev] in PREPOSITIONS or prev in poss)
    if prev is None or prev in poss:
        return True
    if toks[prev] in SUBJECT_PRONOUNS or toks[prev] == "to":
        subject, singular = True, toks[prev] not in ("they", "to")
    else:  # a noun opening its clause or after a determiner: "a man", "his dog", "people"
        h = before(prev)
        subject = is_noun(toks[prev]) and (h is None or toks[h] in DETERMINERS or h in poss)
        singular = h is not None and toks[h] in SINGULAR
    if subject and nxt in OBJECT_DETERMINERS:  # "a man strums a guitar"
        return False
    s_form = w.endswith("s") and not w.endswith(("ss", "us", "is"))  # naps, but not bus, grass
    if subject and singular and s_form and (nxt is None or nxt in PREPOSITIONS):  # "a cat naps on"
        return False
    return True


def plural_stem(word: str) -> str:
    """The stemmer without nltk (mmpo's, the same on every machine): plurals only."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"  # puppies
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]  # benches, dishes, glasses, boxes
    return word[:-1] if word.endswith("s") and not word.endswith(("ss", "us", "is")) else word


def stemmer(tagger: str = "auto"):
    """Porter's stemmer (pke's, via nltk) where nltk tags, else ``plural_stem``."""
    if resolve(tagger) is not None:
        try:
            from nltk.stem import PorterStemmer
            return PorterStemmer().stem
        except ImportError:  # a tagger stood in by hand (tests): no nltk behind it
            pass
    return plural_stem
