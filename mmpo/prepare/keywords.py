"""MFPO's keyword selection (Jiang et al. 2024, sec. 3.1 "Keyword Selection"): which phrases of
the chosen answer name the image regions that matter. Pure Python + torch, runs offline; the
words' tags and stems come from mmpo/common/tagging.py (nltk's when installed, else its rules).

The paper builds "a multipartite graph [Boudin, 2018]" over the answer and ranks it with a
weighted PageRank. Both forms here build Boudin's graph as pke computes it (pke's
MultipartiteRank, pke/unsupervised/graph_based/multipartiterank.py, commit 69871ff; Boudin 2018,
"Unsupervised Keyphrase Extraction with Multipartite Graphs", arXiv 1803.08721):

  text        tokens with tags and stems (``tagged_sentences``); positions count every token,
              punctuation and a possessive 's included.
  candidates  the longest runs of NOUN/PROPN/ADJ tokens, one node per stem sequence with the
              offsets of all its occurrences; dropped whole when a word is one of spaCy's stop
              words (spacy_stop_words.txt), the words are shorter than 3 characters together, one
              is a single character, or there are more than 5 (``candidates``).
  topics      scipy's average linkage on the Jaccard distance of their stem sets, cut at 0.74
              (``topics``); no edge inside a topic.
  edges       mu_ij = sum over occurrence pairs of theta(gap), gap = pke's compute_gap (tokens from
              the end of the earlier to the start of the later, + 1), then into the first-occurring
              candidate f of each topic T(f): tau_fj = mu_fj + alpha e^(1/(1 + l_f)) sum_{k in T(f),
              k != f} mu_kj (pke's weight_adjustment, alpha = 1.1; l: first offset).
  ranking     PageRank, a = 0.85.

``graph="boudin"`` is that graph exactly as pke ranks it (``boudin_rank``): theta = 1 / gap, networkx's
PageRank (``pagerank(norm="column")``); given the same tokens, tags and stems it gives pke's scores
(tests/test_keywords_boudin.py, on pke's own numbers). ``graph="multipartite"`` (the default) is
the paper's form on the same graph, each of its terms an argument of ``rank_keywords``:

  theta="mfpo"     theta = 1 / (1 + gap^phi), the paper's positional influence (phi = 1 ours);
                   "boudin": 1 / gap.
  vectors, gamma   mu_ij += gamma max(cos(v_i, v_j), 0), the paper's semantic similarity (gamma 0.5
                   ours; clamped at 0 by us: a random walk has no negative edges); no vectors: none.
  lam              omega_ij = tau_ij e^(-lam l_i), the paper's positional decay (lam 0.05 ours); 0: none.
  norm="paper"     the paper's normalisation by sum_m omega_jm (``pagerank``); "column": networkx's.
  noun_ending      mmpo's: a run ends on its last noun ("the sky is blue": no "blue"); False: pke's.
  compounds        mmpo's: a stop word inside a listed object name ("trash can") drops nothing;
                   False: pke's filter.

MFPO "adjusts edge weights contextually using related words" without a formula: in Boudin's graph
the related candidates are a topic's other members, and his weight adjustment is that step. The
paper gives no phi, gamma, lambda, a or K: 1, 0.5, 0.05, 0.85 (PageRank's and pke's damping), 3
are ours.

``graph="words"`` is the paper's text read literally ("nodes V represent words"): every content
word its own node, all pairs linked, tau = mu (with no topics there are no related words to
adjust with), and nouns only kept after ranking. It splits multi-word objects ("traffic",
"light"); kept to compare with, and because the paper's formulas are written over words.
"""
import math
import os
import string
from typing import NamedTuple

import torch

from mmpo.common.tagging import COMPOUND_NOUNS, STOPWORDS, noun_flags, pos_tags, stemmer, tokenize, words

# ---- the text, as pke reads it ---------------------------------------------------------------

def tagged_sentences(text: str, tagger: str = "auto") -> list[list[tuple[str, str, str]]]:
    """``text`` as pke reads it: one sentence of (token, tag, stem), punctuation and a possessive
    's their own tokens (tagged PUNCT and PART); a word ``pos_tags`` calls "N" a NOUN, "A" an ADJ,
    any other X. Stems: ``stemmer`` (Porter's, as pke's, where nltk is installed)."""
    toks, spell, seps, poss = tokenize(text)
    tags, stem = pos_tags(text, tagger), stemmer(tagger)
    out = []
    for t, w in enumerate(spell):
        out += [(c, "PUNCT", c) for c in seps[t]]
        out.append((w, {"N": "NOUN", "A": "ADJ"}.get(tags[t], "X"), stem(toks[t]).lower()))
        if t in poss:
            out.append(("'s", "PART", "'s"))
    return [out + [(c, "PUNCT", c) for c in seps[-1]]]


def _stop_words() -> frozenset[str]:
    with open(os.path.join(os.path.dirname(__file__), "spacy_stop_words.txt"), encoding="utf-8") as f:
        return frozenset(ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#"))


SPACY_STOP_WORDS = _stop_words()  # pke's stop list for English: spaCy's
CANDIDATE_TAGS = ("NOUN", "PROPN", "ADJ")


# ---- the graph: candidates, topics, edges ----------------------------------------------------

class Candidate(NamedTuple):
    text: str                # the first occurrence, lower-case: what the detector is asked for
    stems: tuple[str, ...]   # its identity: "dog" and "dogs" are one candidate
    offsets: list[int]       # token index of the first word of each occurrence

    @property
    def key(self) -> str:    # pke's lexical form
        return " ".join(self.stems)


def candidates(sentences: list[list[tuple[str, str, str]]], noun_ending: bool = False,
               compounds: bool = False) -> list[Candidate]:
    """pke's candidate_selection: the longest runs of NOUN/PROPN/ADJ tokens in each sentence of
    ``(word, tag, stem)``, one candidate per stem sequence, in order of first occurrence; then its
    candidate_filtering with its defaults: a candidate goes whole if a word of its first occurrence
    (lower-cased) is a spaCy stop word or only punctuation, if its words have fewer than 3
    characters together, a word of 1 character, more than 5 words, or a character that is not
    alphanumeric (a hyphen aside). mmpo's options, not pke's: ``noun_ending``, a run ends on its
    last noun, so that an adjective alone ("the sky is blue") names no region; ``compounds``, a
    stop word inside a listed object name (tagging.COMPOUND_NOUNS: "trash can") drops nothing."""
    found: dict[tuple, tuple[tuple, Candidate]] = {}
    shift = 0
    for sentence in sentences:
        run = []
        for j, (_, tag, _) in enumerate(sentence + [("", "", "")]):  # a sentinel closes the last run
            if tag in CANDIDATE_TAGS:
                run.append(j)
                continue
            while noun_ending and run and sentence[run[-1]][1] not in ("NOUN", "PROPN"):
                run.pop()
            if run:
                written, stems = zip(*[(w, s) for w, _, s in sentence[run[0]:run[-1] + 1]])
                found.setdefault(stems, (written, Candidate(" ".join(written).lower(), stems, [])))[1].offsets.append(
                    shift + run[0])
            run = []
        shift += len(sentence)

    def kept(written) -> bool:
        low = [w.lower() for w in written]
        named = {w for pair in zip(low, low[1:]) if pair in COMPOUND_NOUNS for w in pair} if compounds else set()
        return not ((set(low) - named) & SPACY_STOP_WORDS or any(set(w) <= set(string.punctuation) for w in low)
                    or len("".join(low)) < 3 or min(map(len, low)) < 2 or len(low) > 5
                    or not all(w.replace("-", "").isalnum() for w in low))
    return [c for written, c in found.values() if kept(written)]


def keyphrase_candidates(text: str, tagger: str = "auto", noun_ending: bool = True, compounds: bool = True
                         ) -> list[Candidate]:
    """``candidates`` of ``text`` (``tagged_sentences``)."""
    return candidates(tagged_sentences(text, tagger), noun_ending, compounds)


def topics(stems: list[tuple[str, ...]], threshold: float = 0.74) -> list[int]:
    """pke's topic_clustering: scipy's fcluster(linkage(pdist(X, "jaccard"), "average"), threshold,
    "distance") over the candidates sorted by their stems joined (pke's keys), X their stems; a
    topic per candidate, numbered by first member. scipy builds average linkage with its
    nearest-neighbour chain (_hierarchy.nn_chain), written out here because ties make its merge
    order matter."""
    order = sorted(range(len(stems)), key=lambda i: " ".join(stems[i]))
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
    cluster = {order[rank]: find(rank) for rank in range(n)}
    number = {}
    return [number.setdefault(cluster[i], len(number)) for i in range(n)]


def gap(p: int, q: int, len_p: int, len_q: int) -> int:
    """pke's compute_gap: tokens from the end of the earlier candidate to the start of the later, + 1."""
    g = abs(p - q) - (len_p - 1 if p < q else len_q - 1 if p > q else 0)
    return g if g else 1


def edge_weights(cands: list[Candidate], topic: list[int], *, theta: str = "mfpo", phi: float = 1.0, vectors=None,
                 gamma: float = 0.5, alpha: float = 1.1, lam: float = 0.05) -> torch.Tensor:
    """omega (n, n), float64, omega[i, j] the weight of edge j -> i (module docstring): between
    topics mu = theta (summed over occurrence pairs) + gamma * max(cos, 0), then the boost into
    each topic's first candidate, from mu (pke's weight_adjustment), then the decay by the target."""
    n = len(cands)
    mu = [[0.0] * n for _ in range(n)]  # mu[i][j]: edge i -> j, symmetric
    for i in range(n):
        for j in range(i + 1, n):
            if topic[i] != topic[j]:
                gaps = [gap(p, q, len(cands[i].stems), len(cands[j].stems)) for p in cands[i].offsets
                        for q in cands[j].offsets]
                mu[i][j] = mu[j][i] = sum(1.0 / g if theta == "boudin" else 1.0 / (1.0 + g ** phi) for g in gaps)
    if vectors is not None and gamma and n:
        v = torch.nn.functional.normalize(torch.stack([vectors(c.text).double() for c in cands]), dim=-1)
        cos = (v @ v.T).clamp_min(0).tolist()  # >= 0: a random walk has no negative edges
        mu = [[mu[i][j] + gamma * cos[i][j] if topic[i] != topic[j] else 0.0 for j in range(n)] for i in range(n)]
    w = [row[:] for row in mu]
    for k in dict.fromkeys(topic):
        members = sorted((i for i in range(n) if topic[i] == k), key=lambda i: cands[i].key)  # pke's order
        f = min(members, key=lambda i: cands[i].offsets[0])
        for j in range(n):
            boosters = [mu[v][j] for v in members if v != f]
            if topic[j] != k and boosters:
                w[j][f] += sum(boosters) * alpha * math.exp(1.0 / (1 + cands[f].offsets[0]))
    omega = torch.tensor(w, dtype=torch.float64).reshape(n, n).T  # omega[i, j] = w[j][i]
    return omega * torch.exp(-lam * torch.tensor([float(c.offsets[0]) for c in cands], dtype=torch.float64))[:, None]


def multipartite_graph(text: str, *, tagger: str = "auto", threshold: float = 0.74, noun_ending: bool = True,
                       compounds: bool = True, **weights):
    """(candidates, topic per candidate, omega): Boudin's graph of ``text`` in MFPO's weights."""
    cands = keyphrase_candidates(text, tagger, noun_ending, compounds)
    topic = topics([c.stems for c in cands], threshold)
    return cands, topic, edge_weights(cands, topic, **weights)


def word_graph(text: str, *, vectors=None, phi: float = 1.0, gamma: float = 0.5,
               lam: float = 0.05) -> tuple[list[str], torch.Tensor]:
    """The content words (unique, in order of appearance) and omega (n, n) of the word graph:
    each word its own topic, so every pair is linked and nothing is adjusted."""
    tokens = [w.lower() for s in tagged_sentences(text, "rules") for w, _, _ in s]  # positions as pke counts them
    uniq = [w for w in dict.fromkeys(words(text)) if w not in STOPWORDS]
    cands = [Candidate(w, (w,), [i for i, t in enumerate(tokens) if t == w]) for w in uniq]
    return uniq, edge_weights(cands, list(range(len(cands))), vectors=vectors, phi=phi, gamma=gamma, lam=lam)


# ---- the ranking -----------------------------------------------------------------------------

def pagerank(omega: torch.Tensor, *, a: float = 0.85, norm: str = "paper", iters: int = 1000,
             tol: float = 1e-10) -> torch.Tensor:
    """Weighted PageRank scores (n,) of the graph omega (n, n), omega[i, j] = weight of j -> i.

    norm: what j's contribution is divided by; the two agree on the ranking when omega is
    symmetric (lam = 0).
      "paper":  r_i = (1 - a) + a * sum_j omega_ij r_j / z_j with z_j = sum_m omega_jm, j's row, as
                the paper prints it (sec. 3.1), iterated from r = 1 to a relative change < tol.
                With omega_ij = kappa_i mu_ij its matrix is K P K^-1 (K = diag(kappa), P = mu /
                mu.sum(0) column-stochastic), so r = K s with s the undecayed PageRank restarting in
                proportion to 1 / kappa: it converges, but it is no Markov chain; the decay tilts the
                restarts to late words and then scales the scores to early words.
      "column": networkx's pagerank, as pke calls it: z_j = sum_i omega_ij, all that j gives away
                (a random surfer, TextRank's normalisation, Mihalcea & Tarau 2004), a node with no
                out-edge spreading its score evenly, scores summing to 1, iterated from 1/n until
                they change by less than n * 1e-6 in total (networkx's tol; ``tol`` is the paper
                form's).
    """
    n = omega.shape[0]
    if norm == "column":
        out = omega.sum(0).tolist()  # (n,): what each j gives away
        walk = [[omega[i, j].item() for j in range(n)] for i in range(n)]
        x = [1.0 / n] * n
        for _ in range(100):
            dangling = sum(x[j] for j in range(n) if out[j] == 0)
            new = [a * (sum(x[j] * walk[i][j] / out[j] for j in range(n) if out[j]) + dangling / n) + (1 - a) / n
                   for i in range(n)]
            done = sum(abs(p - q) for p, q in zip(new, x)) < n * 1e-6
            x = new
            if done:
                return torch.tensor(x, dtype=torch.float64)
        raise RuntimeError("pagerank did not converge in 100 iterations")
    if norm != "paper":
        raise ValueError(f"norm must be 'paper' or 'column', not {norm!r}")
    z = omega.sum(1)  # (n,)
    z = torch.where(z > 0, z, torch.ones_like(z))  # a word with no edges only keeps 1 - a
    walk = omega / z[None, :]  # (n, n)
    r = torch.ones(n, dtype=omega.dtype)
    for _ in range(iters):
        new = (1 - a) + a * walk @ r
        done = ((new - r).abs().max() <= tol * new.abs().max()).item() if n else True
        r = new
        if done:
            break
    return r


def rank_keywords(text: str, k: int = 3, *, graph: str = "multipartite", vectors=None, theta: str = "mfpo",
                  phi: float = 1.0, gamma: float = 0.5, lam: float = 0.05, alpha: float = 1.1, threshold: float = 0.74,
                  a: float = 0.85, norm: str = "paper", noun_ending: bool = True, compounds: bool = True,
                  tagger: str = "auto") -> list[str]:
    """The top-k keyphrases of ``text`` (deterministic; ties: the earlier first). graph:
    "multipartite" (Boudin's graph in MFPO's weights, each term an argument: module docstring),
    "boudin" (pke's MultipartiteRank exactly, ``boudin_rank``; only alpha and threshold apply) or
    "words" (nouns of the word graph); vectors: an optional text -> 1-D tensor (embeddings) for the
    semantic term; norm: see ``pagerank``; tagger: see ``pos_tags``."""
    if graph == "boudin":
        return [p for p, _ in boudin_rank(tagged_sentences(text, tagger), alpha=alpha, threshold=threshold)][:k]
    weights = dict(vectors=vectors, phi=phi, gamma=gamma, lam=lam)
    if graph == "multipartite":
        cands, _, omega = multipartite_graph(text, tagger=tagger, threshold=threshold, noun_ending=noun_ending,
                                             compounds=compounds, theta=theta, alpha=alpha, **weights)
        names, keep = [c.text for c in cands], None
    elif graph == "words":
        names, omega = word_graph(text, **weights)
        keep = {w for w, noun in zip(words(text), noun_flags(text, tagger)) if noun}
    else:
        raise ValueError(f"graph must be 'multipartite', 'boudin' or 'words', not {graph!r}")
    if not names:
        return []
    r = pagerank(omega, a=a, norm=norm)
    order = sorted(range(len(names)), key=lambda i: -r[i].item())  # stable: candidates are in order of appearance
    return [names[i] for i in order if keep is None or names[i] in keep][:k]


def boudin_rank(sentences: list[list[tuple[str, str, str]]], *, alpha: float = 1.1, threshold: float = 0.74
                ) -> list[tuple[str, float]]:
    """pke's MultipartiteRank (candidate_selection, then candidate_weighting(alpha, threshold,
    "average")) on ``(word, tag, stem)`` sentences: every candidate as pke's get_n_best gives it,
    with its score, best first."""
    cands = candidates(sentences)
    if not cands:
        return []
    omega = edge_weights(cands, topics([c.stems for c in cands], threshold), theta="boudin", alpha=alpha, lam=0.0)
    r = pagerank(omega, norm="column").tolist()
    return [(cands[i].text, r[i]) for i in sorted(range(len(cands)), key=lambda i: -r[i])]


def embedding_vectors(model, tokenizer):
    """word or phrase -> mean input embedding of its tokens (the text model's own vectors)."""
    table = model.get_input_embeddings().weight.detach()

    def vec(word: str) -> torch.Tensor:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        return table[ids].float().mean(0)
    return vec
