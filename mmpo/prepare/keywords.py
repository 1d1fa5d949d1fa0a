"""MFPO's keyword selection (Jiang et al. 2024, sec. 3.1): which words of the chosen answer name
the image regions that matter. Pure Python + torch, runs offline; uses nltk's part-of-speech
tagger only when it is installed with its data (never required, never downloaded).

A graph over the answer's content words, weighted by position and meaning:
    theta_ij = sum over occurrences 1 / (1 + |l_i - l_j|^phi)      positional influence
    mu_ij    = theta_ij + gamma * cos(v(k_i), v(k_j))               + semantic similarity
    omega_ij = mu_ij * exp(-lambda * l_i)                           positional decay (tau = mu)
ranked by weighted PageRank, r(k_i) = (1 - a) + a * sum_j omega_ij r(k_j) / sum_m omega_jm (the
paper's normalisation; TextRank's column-stochastic one is ``norm="column"``), and the top-K
nouns kept: verbs ("rides", "holds") never reach the object detector. l_i is the position of k_i's
first occurrence (in words). The paper gives no values for phi, gamma, lambda, a or K, nor its
contextual adjustment tau; the defaults below are ours. Word vectors are optional (any embedding
table, e.g. the text model's input embeddings); without them the semantic term is 0.
"""
import functools
import re

import torch

STOPWORDS = set("""
a an the this that these those there here it its it's they them their he him his she her hers we us our you your i
me my is are was were be been being am do does did doing have has had having will would can could should may might
must shall of in on at to from by with without for about above below over under into onto out up down off near next
beside besides behind between among through across along around against toward towards before after during while
within upon via than then and or but nor so yet if because as not no also too very just only quite rather really
some any each every all both either neither many much more most few several other another such what which who whom
whose where when why how one two three four five six seven eight nine ten first second third image picture photo
shows show showing seen see appears appear looks look visible left right top bottom middle center front back side
""".split())

# Never the object: sizes, colors, textures, positions.
ADJECTIVES = set("""
big small large little tiny huge tall short long wide narrow old new young bright dark light heavy empty full open
closed round flat wooden metal plastic red green blue yellow orange purple pink brown black white gray grey
silver golden gold beige colorful striped patterned clear cloudy sunny several various nearby together alive
""".split())

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


def noun_flags(text: str, tagger: str = "auto") -> list[bool]:
    """Per word of ``words(text)``: is it used as a noun here?

    tagger: "auto" (nltk's tagger when installed with its data, else the rules), "nltk" (error
    without it) or "rules" (always the built-in rules, the same on every machine).
    Either way a word that ``is_noun`` rejects is never a noun. The rules, per occurrence:
    a VERBISH word (flies, swings) is a verb unless a determiner, number, preposition or possessive
    comes right before it; any other word is a verb in "subject WORD object" shape (the subject a
    pronoun, "to", or a noun opening its clause or after a determiner; the object opening with
    a/an/the/his/her/its/their/some/two..: "a man strums a guitar"), or, ending in -s, after a
    singular subject and before a preposition or the clause's end ("a cat naps on", "she waves.").
    """
    if tagger not in ("auto", "nltk", "rules"):
        raise ValueError(f"tagger must be 'auto', 'nltk' or 'rules', not {tagger!r}")
    toks, spell, seps, poss = tokenize(text)
    tag = nltk_tagger() if tagger != "rules" else None
    if tagger == "nltk" and tag is None:
        raise RuntimeError(f"tagger='nltk' needs nltk and its tagger data: {NLTK_INSTALL}")
    if tag is not None:
        seq, where = [], []
        for t, w in enumerate(spell):
            seq += list(seps[t])
            where.append(len(seq))
            seq += [w, "'s"] if t in poss else [w]
        tags = [p for _, p in tag(seq + list(seps[-1]))]
        return [tags[where[t]].startswith("NN") and is_noun(w) for t, w in enumerate(toks)]
    return [_rule_noun(toks, seps, poss, t) for t in range(len(toks))]


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


def word_graph(text: str, *, vectors=None, phi: float = 1.0, gamma: float = 0.5,
               lam: float = 0.05) -> tuple[list[str], torch.Tensor]:
    """The candidates (content words, unique, in order of appearance) and omega (n, n), float64,
    omega[i, j] = omega_ij = mu_ij * exp(-lam * l_i): the weight of edge j -> i."""
    tokens = words(text)
    cands = [w for w in dict.fromkeys(tokens) if w not in STOPWORDS]
    pos = {w: [i for i, t in enumerate(tokens) if t == w] for w in cands}
    n = len(cands)
    theta = torch.zeros(n, n, dtype=torch.float64)
    for i, wi in enumerate(cands):
        for j, wj in enumerate(cands):
            if i != j:
                theta[i, j] = sum(1.0 / (1.0 + abs(li - lj) ** phi) for li in pos[wi] for lj in pos[wj])
    mu = theta
    if vectors is not None and n:
        v = torch.nn.functional.normalize(torch.stack([vectors(w).double() for w in cands]), dim=-1)
        # clamped at 0: a negative edge weight has no meaning in PageRank
        mu = mu + gamma * (v @ v.T).clamp_min(0) * (1 - torch.eye(n, dtype=torch.float64))
    first = torch.tensor([pos[w][0] for w in cands], dtype=torch.float64)
    return cands, mu * torch.exp(-lam * first)[:, None]


def pagerank(omega: torch.Tensor, *, a: float = 0.85, norm: str = "paper", iters: int = 1000,
             tol: float = 1e-10) -> torch.Tensor:
    """Weighted PageRank scores (n,) of the graph omega (n, n), omega[i, j] = weight of j -> i:
    r_i = (1 - a) + a * sum_j omega_ij r_j / z_j, iterated from r = 1 to a relative change < tol.

    norm: what j's contribution is divided by; the two agree when omega is symmetric (lam = 0).
      "paper":  z_j = sum_m omega_jm, j's row, as the paper prints it (sec. 3.1). With
                omega_ij = kappa_i mu_ij its matrix is K P K^-1 (K = diag(kappa), P = mu / mu.sum(0)
                column-stochastic), so r = K s with s the undecayed PageRank restarting in
                proportion to 1 / kappa: it converges, but it is no Markov chain and its scores
                need not sum to n; the decay tilts the restarts to late words and then scales
                the scores to early words, instead of steering the walk.
      "column": z_j = sum_i omega_ij, all that j gives away: every column of the matrix sums to
                1, a proper Markov chain (random surfer) whose scores sum to n, i.e. TextRank's
                normalisation (Mihalcea & Tarau 2004, which the paper cites); the decay steers
                the walk towards early words.
    """
    if norm not in ("paper", "column"):
        raise ValueError(f"norm must be 'paper' or 'column', not {norm!r}")
    z = omega.sum(1) if norm == "paper" else omega.sum(0)  # (n,)
    z = torch.where(z > 0, z, torch.ones_like(z))  # a word with no edges only keeps 1 - a
    walk = omega / z[None, :]  # (n, n)
    r = torch.ones(omega.shape[0], dtype=omega.dtype)
    for _ in range(iters):
        new = (1 - a) + a * walk @ r
        done = ((new - r).abs().max() <= tol * new.abs().max()).item() if len(r) else True
        r = new
        if done:
            break
    return r


def rank_keywords(text: str, k: int = 3, *, vectors=None, phi: float = 1.0, gamma: float = 0.5,
                  lam: float = 0.05, a: float = 0.85, iters: int = 1000, tol: float = 1e-10,
                  norm: str = "paper", tagger: str = "auto") -> list[str]:
    """The top-k nouns of ``text`` by MFPO's weighted PageRank (deterministic). vectors: an
    optional word -> 1-D tensor (word embeddings) for the semantic term; phi, gamma, lam, a: as in
    the formulas above; norm: see ``pagerank``; tagger: see ``noun_flags``."""
    cands, omega = word_graph(text, vectors=vectors, phi=phi, gamma=gamma, lam=lam)
    if not cands:
        return []
    r = pagerank(omega, a=a, norm=norm, iters=iters, tol=tol)
    nouns = {w for w, noun in zip(words(text), noun_flags(text, tagger)) if noun}
    order = sorted(range(len(cands)), key=lambda i: (-r[i].item(), i))  # ties: earlier word first
    return [cands[i] for i in order if cands[i] in nouns][:k]


def embedding_vectors(model, tokenizer):
    """word -> mean input embedding of its tokens (the text model's own vectors)."""
    table = model.get_input_embeddings().weight.detach()

    def vec(word: str) -> torch.Tensor:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        return table[ids].float().mean(0)
    return vec
