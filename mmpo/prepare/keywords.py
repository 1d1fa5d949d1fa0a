"""MFPO's keyword selection (Jiang et al. 2024, sec. 3.1 "Keyword Selection"): which phrases of
the chosen answer name the image regions that matter. Pure Python + torch, runs offline; the
words' tags and stems come from mmpo/common/tagging.py (nltk's when installed, else its rules).

The paper builds "a multipartite graph [Boudin, 2018]" over the answer and ranks it with a
weighted PageRank. ``graph="multipartite"`` (the default) is Boudin's graph (Boudin 2018,
"Unsupervised Keyphrase Extraction with Multipartite Graphs", arXiv 1803.08721; read against
pke's MultipartiteRank, pke/unsupervised/graph_based/multipartiterank.py) in MFPO's weights:

  candidates  the longest runs of nouns and adjectives in a clause, ending on a noun: "traffic
              light", "red dress", "street" (pke's candidate_selection takes the longest noun and
              adjective runs; its noun-phrase grammar, base.py grammar_selection, ends them on a
              noun, as here: "blue" alone, in "the sky is blue", names no region). One node per
              stemmed form, with the word offsets l of all its occurrences.
  topics      candidates grouped by shared stems: agglomerative clustering, average linkage, on
              the Jaccard distance of their stem sets, cut at 0.74 (Boudin; pke's default): more
              than a quarter of the stems in common ("tennis racket", "racket"). See ``topics``.
  edges       only between candidates of different topics; omega[i, j] is the edge j -> i:
      theta_ij = sum over occurrences 1 / (1 + d^phi)              positional influence
      mu_ij    = theta_ij + gamma * max(cos(v(k_i), v(k_j)), 0)    + semantic similarity
      tau_fj   = mu_fj + alpha e^(1/(1 + l_f)) sum_{k in T(f), k != f} mu_kj
                 into the first-occurring candidate f of each topic T(f) (else tau = mu)
      omega_ij = tau_ij * exp(-lambda * l_i)                       positional decay
  ranking     ``pagerank``: r_i = (1 - a) + a * sum_j omega_ij r_j / z_j, top-K candidates.

d is the number of words from the end of the earlier occurrence to the start of the later (pke's
gap: a phrase's own length does not push its neighbours away; for two words, |l_i - l_j| as the
paper writes). l is the offset of the first occurrence, in words from 0. MFPO "adjusts edge
weights contextually using related words" without a formula: in Boudin's graph the related
candidates are a topic's other members, and his weight adjustment (alpha = 1.1, the first
occurrence's position as in pke's weight_adjustment) is that step. The cosine is clamped at 0
(mmpo's choice; the paper does not say): a negative edge weight has no meaning in a random walk,
and a negative z_j could flip the signs of every score. Word vectors are optional (any
embedding, e.g. the text model's; a phrase's is the mean over its tokens); without them the
semantic term is 0. The paper gives no phi, gamma, lambda, a or K: phi = 1, gamma = 0.5,
lambda = 0.05, a = 0.85 (PageRank's and pke's damping), K = 3 are ours.

``graph="boudin"`` is Boudin's MultipartiteRank exactly as pke computes it (``boudin_rank``; tested
against pke's own candidates, topics, edge weights and scores): its candidates (the longest
NOUN/PROPN/ADJ runs, a run may end on an adjective; dropped whole when a word is one of spaCy's
stop words, too short, or the run is over 5 words), positions in tokens (punctuation and 's
count), theta = sum of 1 / gap, the boost computed from the unboosted weights, scipy's average
linkage (its tie order included) and networkx's PageRank. Given the same tokens, tags and stems
it gives pke's ranking; here the tags come from ``pos_tags`` and the stems from ``stemmer``
(Porter's, as pke's, where nltk is installed). The default graph above departs from it in the
candidates, the positions, theta and the ties; those departures are MFPO's or mmpo's, not Boudin's.

``graph="words"`` is the paper's text read literally ("nodes V represent words"): every content
word its own node, all pairs linked, tau = mu (with no topics there are no related words to
adjust with), and nouns only kept after ranking. It splits multi-word objects ("traffic",
"light"); kept to compare with, and because the paper's formulas are written over words.
"""
import math
import os
import re
import string
from typing import NamedTuple

import torch

from mmpo.common.tagging import STOPWORDS, noun_flags, pos_tags, stemmer, tokenize, words

# ---- the graphs ------------------------------------------------------------------------------

class Candidate(NamedTuple):
    text: str                # as first written, lower-case: what the detector is asked for
    stems: tuple[str, ...]   # its identity: "dog" and "dogs" are one candidate
    offsets: list[int]       # word index of the first word of each occurrence


def keyphrase_candidates(text: str, tagger: str = "auto") -> list[Candidate]:
    """Boudin's candidates, in order of first occurrence: the longest noun and adjective runs that
    end on a noun, never across punctuation or a possessive ("the man's dog": man, dog)."""
    toks, _, seps, poss = tokenize(text)
    tags, stem = pos_tags(text, tagger), stemmer(tagger)
    found: dict[tuple, Candidate] = {}
    t = 0
    while t < len(toks):
        e = t + 1
        while tags[t] and e < len(toks) and tags[e] and not seps[e] and e - 1 not in poss:
            e += 1
        for m in re.finditer(r"[AN]*N", "".join(tags[t:e]) if tags[t] else ""):
            s, f = t + m.start(), t + m.end()
            key = tuple(stem(w) for w in toks[s:f])
            found.setdefault(key, Candidate(" ".join(toks[s:f]), key, [])).offsets.append(s)
        t = e
    return list(found.values())


def topics(stems: list[tuple[str, ...]], threshold: float = 0.74) -> list[int]:
    """Topic index per candidate (topics numbered by first member). Agglomerative clustering
    with average linkage on the Jaccard distance of stem sets, merged while the closest two
    clusters are at most ``threshold`` apart (scipy's fcluster(linkage(.., "average"), t,
    "distance"), as pke calls it). Ties: the pair met first in the answer."""
    sets = [set(s) for s in stems]
    dist = [[1 - len(x & y) / len(x | y) for y in sets] for x in sets]  # between clusters, as they merge
    clusters = [[i] for i in range(len(sets))]
    while len(clusters) > 1:
        d, x, y = min((dist[x][y], x, y) for x in range(len(clusters)) for y in range(x + 1, len(clusters)))
        if d > threshold:
            break
        nx, ny = len(clusters[x]), len(clusters[y])
        for z in range(len(clusters)):  # the mean over all pairs, kept by Lance-Williams' update
            dist[x][z] = dist[z][x] = (nx * dist[x][z] + ny * dist[y][z]) / (nx + ny)
        clusters[x] += clusters.pop(y)
        dist.pop(y)
        for row in dist:
            row.pop(y)
    topic = [0] * len(sets)
    for n, members in enumerate(clusters):
        for i in members:
            topic[i] = n
    return topic


def edge_weights(cands: list[Candidate], topic: list[int], *, vectors=None, phi: float = 1.0, gamma: float = 0.5,
                 lam: float = 0.05, alpha: float = 1.1) -> torch.Tensor:
    """omega (n, n), float64, omega[i, j] = omega_ij, the weight of edge j -> i (module docstring)."""
    n = len(cands)
    ids = torch.tensor(topic, dtype=torch.long)
    apart = (ids[:, None] != ids[None, :]).double()  # (n, n): 1 across topics
    mu = torch.zeros(n, n, dtype=torch.float64)
    for i, ci in enumerate(cands):
        for j, cj in enumerate(cands):
            if topic[i] != topic[j]:  # (p, q): first words; the earlier one's length is skipped
                mu[i, j] = sum(1.0 / (1.0 + (abs(p - q) - (len(ci.stems) - 1 if p < q else len(cj.stems) - 1)) ** phi)
                               for p in ci.offsets for q in cj.offsets)
    if vectors is not None and n:
        v = torch.nn.functional.normalize(torch.stack([vectors(c.text).double() for c in cands]), dim=-1)
        mu = mu + gamma * (v @ v.T).clamp_min(0) * apart  # >= 0: a random walk has no negative edges
    tau = mu.clone()
    first = torch.tensor([c.offsets[0] for c in cands], dtype=torch.float64)
    for k in set(topic):
        members = [i for i in range(n) if topic[i] == k]
        f = members[0]  # candidates come in order of first occurrence
        others = mu[members[1:]].sum(0)  # (n,): zero inside the topic
        tau[f] += alpha * math.exp(1.0 / (1.0 + first[f].item())) * others
    return tau * torch.exp(-lam * first)[:, None]


def multipartite_graph(text: str, *, tagger: str = "auto", threshold: float = 0.74, **weights):
    """(candidates, topic per candidate, omega): Boudin's graph of ``text`` in MFPO's weights."""
    cands = keyphrase_candidates(text, tagger)
    topic = topics([c.stems for c in cands], threshold)
    return cands, topic, edge_weights(cands, topic, **weights)


def word_graph(text: str, *, vectors=None, phi: float = 1.0, gamma: float = 0.5,
               lam: float = 0.05) -> tuple[list[str], torch.Tensor]:
    """The content words (unique, in order of appearance) and omega (n, n) of the word graph:
    each word its own topic, so every pair is linked and nothing is adjusted."""
    tokens = words(text)
    uniq = [w for w in dict.fromkeys(tokens) if w not in STOPWORDS]
    cands = [Candidate(w, (w,), [i for i, t in enumerate(tokens) if t == w]) for w in uniq]
    return uniq, edge_weights(cands, list(range(len(cands))), vectors=vectors, phi=phi, gamma=gamma, lam=lam)


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
                normalisation (Mihalcea & Tarau 2004, which the paper cites) and pke's (networkx's
                pagerank, the same scores / n); the decay steers the walk towards early words.
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


# ---- Boudin's MultipartiteRank, as pke computes it (graph="boudin") ---------------------------
#
# pke (github.com/boudinfl/pke, commit 69871ff), pke/unsupervised/graph_based/multipartiterank.py
# and the TopicRank and base.py methods it calls, on a text given as tokens (punctuation and 's
# included: positions count them), tags ("NOUN", "PROPN", "ADJ" are candidate words) and stems.

def _stop_words() -> frozenset[str]:
    path = os.path.join(os.path.dirname(__file__), "spacy_stop_words.txt")
    with open(path, encoding="utf-8") as f:
        return frozenset(ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#"))


SPACY_STOP_WORDS = _stop_words()  # pke's stop list for English: spaCy's
CANDIDATE_TAGS = ("NOUN", "PROPN", "ADJ")


class BoudinCandidate(NamedTuple):
    key: str                  # the stems joined by spaces: pke's lexical form
    words: tuple[str, ...]    # the first occurrence as written
    stems: tuple[str, ...]
    offsets: list[int]        # token index of the first word of each occurrence


def boudin_candidates(sentences: list[list[tuple[str, str, str]]]) -> list[BoudinCandidate]:
    """pke's candidate_selection: the longest runs of NOUN/PROPN/ADJ tokens in each sentence
    (``(word, tag, stem)`` tuples), one candidate per stem sequence, in order of first occurrence;
    then candidate_filtering with its defaults: a candidate goes whole if a word of its first
    occurrence (lower-cased) is a spaCy stop word or only punctuation, if its words have fewer than
    3 characters together, a word of 1 character, more than 5 words, or a character that is not
    alphanumeric (a hyphen aside)."""
    found: dict[str, BoudinCandidate] = {}
    shift = 0
    for sentence in sentences:
        run = []
        for j, (_, tag, _) in enumerate(sentence + [("", "", "")]):  # a sentinel closes the last run
            if tag in CANDIDATE_TAGS:
                run.append(j)
                continue
            if run:
                words, stems = zip(*[(w, s) for w, _, s in sentence[run[0]:run[-1] + 1]])
                key = " ".join(stems)
                found.setdefault(key, BoudinCandidate(key, words, stems, [])).offsets.append(shift + run[0])
            run = []
        shift += len(sentence)

    def kept(c: BoudinCandidate) -> bool:
        words = [w.lower() for w in c.words]
        return not (set(words) & SPACY_STOP_WORDS or any(set(w) <= set(string.punctuation) for w in words)
                    or len("".join(words)) < 3 or min(map(len, words)) < 2 or len(c.stems) > 5
                    or not all(w.replace("-", "").isalnum() for w in words))
    return [c for c in found.values() if kept(c)]


def average_linkage_topics(keys: list[str], stems: list[tuple[str, ...]], threshold: float = 0.74) -> list[int]:
    """pke's topic_clustering: scipy's fcluster(linkage(pdist(X, "jaccard"), "average"), threshold,
    "distance") over the candidates sorted by key, X their stems; a topic number per candidate
    (equal: same topic). scipy builds average linkage with its nearest-neighbour chain
    (_hierarchy.nn_chain), written out here because ties make its merge order matter."""
    if len(keys) < 2:
        return [0] * len(keys)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    sets = [set(stems[i]) for i in order]  # scipy's jaccard reads a count as present or not
    n = len(order)
    dist = {(i, j): len(sets[i] ^ sets[j]) / len(sets[i] | sets[j]) for i in range(n) for j in range(i + 1, n)}
    d = lambda i, j: dist[(min(i, j), max(i, j))]  # noqa: E731
    size, chain, merges = [1] * n, [], []
    for _ in range(n - 1):
        if not chain:
            chain = [next(i for i in range(n) if size[i])]
        while True:  # follow nearest neighbours until two are each other's (the previous one kept on ties)
            x = chain[-1]
            y, best = (chain[-2], d(x, chain[-2])) if len(chain) > 1 else (None, math.inf)
            for i in range(n):
                if size[i] and i != x and d(x, i) < best:
                    y, best = i, d(x, i)
            if len(chain) > 1 and y == chain[-2]:
                break
            chain.append(y)
        chain = chain[:-2]
        x, y = min(x, y), max(x, y)
        merges.append((best, x, y))
        nx, ny = size[x], size[y]
        size[x], size[y] = 0, nx + ny  # y stands for the merged cluster
        for i in range(n):
            if size[i] and i != y:
                dist[(min(i, y), max(i, y))] = (nx * d(i, x) + ny * d(i, y)) / (nx + ny)
    root = list(range(n))  # fcluster's "distance": clusters whose merges are all within threshold

    def find(i):
        while root[i] != i:
            i = root[i]
        return i
    for height, x, y in merges:
        if height <= threshold:
            root[find(x)] = find(y)
    topic = [0] * len(keys)
    for rank, i in enumerate(order):
        topic[i] = find(rank)
    return topic


def boudin_gap(p: int, q: int, len_p: int, len_q: int) -> int:
    """pke's compute_gap: tokens from the end of the earlier candidate to the start of the later, + 1."""
    gap = abs(p - q) - (len_p - 1 if p < q else len_q - 1 if p > q else 0)
    return gap if gap else 1


def boudin_graph(cands: list[BoudinCandidate], topic: list[int], alpha: float = 1.1) -> list[list[float]]:
    """w[i][j], the weight of edge i -> j: pke's build_topic_graph (between topics, both ways:
    sum over occurrence pairs of 1 / gap), then its weight_adjustment: into the first-occurring
    candidate f of each topic, each edge j -> f gains alpha e^(1 / (1 + first offset of f)) times
    the weights of the edges from f's topic-mates to j, read before any adjustment."""
    n = len(cands)
    w = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if topic[i] != topic[j]:
                w[i][j] = w[j][i] = sum(1.0 / boudin_gap(p, q, len(cands[i].stems), len(cands[j].stems))
                                        for p in cands[i].offsets for q in cands[j].offsets)
    boost = {}
    for k in dict.fromkeys(topic):
        members = sorted((i for i in range(n) if topic[i] == k), key=lambda i: cands[i].key)  # pke's order
        if len(members) < 2:
            continue
        f = min(members, key=lambda i: cands[i].offsets[0])
        for j in range(n):
            boosters = [w[v][j] for v in members if v != f and topic[j] != k]
            if topic[j] != k and boosters:
                boost[(f, j)] = sum(boosters)
    for (f, j), b in boost.items():
        w[j][f] += b * alpha * math.exp(1.0 / (1 + cands[f].offsets[0]))
    return w


def networkx_pagerank(w: list[list[float]], a: float = 0.85, tol: float = 1e-6, max_iter: int = 100) -> list[float]:
    """networkx's pagerank (its defaults, as pke calls it): each node's out-weights normalised, a
    dangling node's score spread evenly, power iteration from 1/N until the scores change by less
    than N * tol in total."""
    n = len(w)
    out = [sum(row) for row in w]
    x = [1.0 / n] * n
    for _ in range(max_iter):
        dangling = sum(x[i] for i in range(n) if out[i] == 0)
        new = [a * (sum(x[i] * w[i][j] / out[i] for i in range(n) if out[i]) + dangling / n) + (1 - a) / n
               for j in range(n)]
        done = sum(abs(p - q) for p, q in zip(new, x)) < n * tol
        x = new
        if done:
            return x
    raise RuntimeError(f"pagerank did not converge in {max_iter} iterations")


def boudin_rank(sentences: list[list[tuple[str, str, str]]], *, alpha: float = 1.1, threshold: float = 0.74
                ) -> list[tuple[str, float]]:
    """pke's MultipartiteRank (candidate_selection, then candidate_weighting(alpha, threshold,
    "average")) on ``(word, tag, stem)`` sentences: every candidate as pke's get_n_best gives it,
    its first occurrence lower-cased, with its score, best first (ties: order of first occurrence)."""
    cands = boudin_candidates(sentences)
    if not cands:
        return []
    scores = networkx_pagerank(boudin_graph(cands, average_linkage_topics([c.key for c in cands],
                                                                          [c.stems for c in cands], threshold), alpha))
    order = sorted(range(len(cands)), key=lambda i: -scores[i])
    return [(" ".join(cands[i].words).lower(), scores[i]) for i in order]


def boudin_sentences(text: str, tagger: str = "auto") -> list[list[tuple[str, str, str]]]:
    """``text`` as pke reads it: one sentence of (token, tag, stem), punctuation and a possessive
    's their own tokens (tagged PUNCT and PART); a word ``pos_tags`` calls "N" a NOUN, "A" an ADJ."""
    toks, spell, seps, poss = tokenize(text)
    tags, stem = pos_tags(text, tagger), stemmer(tagger)
    out = []
    for t, w in enumerate(spell):
        out += [(c, "PUNCT", c) for c in seps[t]]
        out.append((w, {"N": "NOUN", "A": "ADJ"}.get(tags[t], "X"), stem(toks[t]).lower()))
        if t in poss:
            out.append(("'s", "PART", "'s"))
    return [out + [(c, "PUNCT", c) for c in seps[-1]]]


def rank_keywords(text: str, k: int = 3, *, graph: str = "multipartite", vectors=None, phi: float = 1.0,
                  gamma: float = 0.5, lam: float = 0.05, alpha: float = 1.1, threshold: float = 0.74, a: float = 0.85,
                  iters: int = 1000, tol: float = 1e-10, norm: str = "paper", tagger: str = "auto") -> list[str]:
    """The top-k keyphrases of ``text`` by MFPO's weighted PageRank (deterministic; ties: the
    earlier first). graph: "multipartite" (Boudin's keyphrases in MFPO's weights), "boudin" (pke's
    MultipartiteRank exactly: ``boudin_rank``; only alpha, threshold and tagger apply) or "words"
    (nouns of the word graph); vectors: an optional text -> 1-D tensor (embeddings) for the semantic term; phi,
    gamma, lam, alpha, threshold, a: as in the module docstring; norm: see ``pagerank``; tagger:
    see ``pos_tags``."""
    if graph == "boudin":
        return [phrase for phrase, _ in boudin_rank(boudin_sentences(text, tagger), alpha=alpha, threshold=threshold)][:k]
    weights = dict(vectors=vectors, phi=phi, gamma=gamma, lam=lam)
    if graph == "multipartite":
        cands, _, omega = multipartite_graph(text, tagger=tagger, threshold=threshold, alpha=alpha, **weights)
        names, keep = [c.text for c in cands], None
    elif graph == "words":
        names, omega = word_graph(text, **weights)
        keep = {w for w, noun in zip(words(text), noun_flags(text, tagger)) if noun}
    else:
        raise ValueError(f"graph must be 'multipartite', 'boudin' or 'words', not {graph!r}")
    if not names:
        return []
    r = pagerank(omega, a=a, norm=norm, iters=iters, tol=tol)
    order = sorted(range(len(names)), key=lambda i: (-r[i].item(), i))  # candidates are in order of appearance
    return [names[i] for i in order if keep is None or names[i] in keep][:k]


def embedding_vectors(model, tokenizer):
    """word or phrase -> mean input embedding of its tokens (the text model's own vectors)."""
    table = model.get_input_embeddings().weight.detach()

    def vec(word: str) -> torch.Tensor:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        return table[ids].float().mean(0)
    return vec
