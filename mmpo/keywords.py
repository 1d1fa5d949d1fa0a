"""MFPO's keyword selection (Jiang et al. 2024, sec. 3.1): which words of the chosen answer name
the image regions that matter. Pure Python + torch, no NLP package, runs offline.

A graph over the answer's content words, weighted by position and meaning:
    theta_ij = sum over occurrences 1 / (1 + |l_i - l_j|^phi)      positional influence
    mu_ij    = theta_ij + gamma * cos(v(k_i), v(k_j))               + semantic similarity
    omega_ij = mu_ij * exp(-lambda * l_i)                           positional decay (tau = mu)
ranked by weighted PageRank, r_i = (1 - a) + a * sum_j omega_ij r_j / sum_m omega_jm, and the
top-K nouns kept. The paper gives no values for phi, gamma, lambda, a or K, nor its contextual
adjustment tau; the defaults below are ours. Word vectors are optional (any embedding table,
e.g. the text model's input embeddings); without them the semantic term is 0.
"""
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

# Words that are never the object: verbs of description, sizes, colors, textures, positions.
NOT_NOUNS = set("""
sits sitting sit stands standing stand lies lying lie holds holding hold wears wearing wear rests resting rest hangs
hanging hang walks walking walk runs running run plays playing play eats eating eat looks looking contains containing
placed located positioned covered filled made displayed parked flying floating leaning surrounded seems seem
big small large little tiny huge tall short long wide narrow old new young bright dark light heavy empty full open
closed round flat wooden metal plastic red green blue yellow orange purple pink brown black white gray grey
silver golden gold beige colorful striped patterned clear cloudy sunny several various nearby together
""".split())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def is_noun(word: str) -> bool:
    """A stopword-, verb- and adjective-free guess; good enough for object words in captions."""
    if word in STOPWORDS or word in NOT_NOUNS or len(word) < 3:
        return False
    return not word.endswith(("ly", "ing", "ed", "ous", "ful", "ive", "ish"))


def rank_keywords(text: str, k: int = 3, *, vectors=None, phi: float = 1.0, gamma: float = 0.5,
                  lam: float = 0.05, a: float = 0.85, iters: int = 100, tol: float = 1e-8) -> list[str]:
    """The top-k nouns of ``text`` by MFPO's weighted PageRank (deterministic).

    Args:
        vectors: optional callable word -> 1-D tensor (word embeddings) for the semantic term.
        phi, gamma, lam: positional decay exponent, weight of similarity, positional damping.
        a: PageRank damping factor. iters, tol: power-iteration limits.
    """
    tokens = words(text)
    cands = [w for w in dict.fromkeys(tokens) if w not in STOPWORDS]  # unique, in order of appearance
    if not cands:
        return []
    pos = {w: [i for i, t in enumerate(tokens) if t == w] for w in cands}
    n = len(cands)
    theta = torch.zeros(n, n, dtype=torch.float64)
    for i, wi in enumerate(cands):
        for j, wj in enumerate(cands):
            if i != j:
                theta[i, j] = sum(1.0 / (1.0 + abs(li - lj) ** phi) for li in pos[wi] for lj in pos[wj])
    mu = theta
    if vectors is not None:
        v = torch.nn.functional.normalize(torch.stack([vectors(w).double() for w in cands]), dim=-1)
        mu = mu + gamma * (v @ v.T).clamp_min(0) * (1 - torch.eye(n, dtype=torch.float64))
    first = torch.tensor([pos[w][0] for w in cands], dtype=torch.float64)
    omega = mu * torch.exp(-lam * first)[:, None]  # (n, n): weight of edge j -> i, damped by i's position
    out_weight = omega.sum(0).clamp_min(1e-12)  # sum_m omega_jm: what j gives away
    r = torch.ones(n, dtype=torch.float64)
    for _ in range(iters):
        new = (1 - a) + a * (omega / out_weight[None, :]) @ r
        done = (new - r).abs().max() < tol
        r = new
        if done:
            break
    order = sorted(range(n), key=lambda i: (-r[i].item(), i))  # ties: earlier word first
    return [cands[i] for i in order if is_noun(cands[i])][:k]


def embedding_vectors(model, tokenizer):
    """word -> mean input embedding of its tokens (the text model's own vectors)."""
    table = model.get_input_embeddings().weight.detach()

    def vec(word: str) -> torch.Tensor:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        return table[ids].float().mean(0)
    return vec
