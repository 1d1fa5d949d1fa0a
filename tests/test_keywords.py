"""MFPO's keyword selection (sec. 3.1): Boudin's multipartite graph of keyphrases (the default)
and the word graph, in the paper's weights and PageRank; the detector asked for whole phrases."""
import math
import types
from collections import Counter

import pytest
import torch
from PIL import Image

from mmpo.common import tagging
from mmpo.prepare import build
from mmpo.prepare.keywords import keyphrase_candidates, multipartite_graph, pagerank, rank_keywords, topics, word_graph
from mmpo.common.tagging import is_noun, noun_flags, words
from mmpo.prepare.regions import Grounding


# ---- Boudin's multipartite graph: keyphrases, topics, MFPO's weights --------------------------

def test_multi_word_objects_stay_whole():
    """Candidates are the longest noun and adjective runs ending on a noun; the word graph splits
    the same objects into words."""
    text = "A traffic light and a fire hydrant on a street"
    assert [c.text for c in keyphrase_candidates(text, "rules")] == ["traffic light", "fire hydrant", "street"]
    assert set(rank_keywords(text, k=3, tagger="rules")) == {"traffic light", "fire hydrant", "street"}
    assert {"traffic", "light", "fire", "hydrant"} <= set(rank_keywords(text, k=10, graph="words", tagger="rules"))
    # adjectives stay with their noun, a verb or a clause break ends the phrase, a lone adjective is none
    assert [c.text for c in keyphrase_candidates("A man holds a tennis racket. The sky is blue and cloudy.", "rules")] \
        == ["man", "tennis racket", "sky"]
    assert [c.text for c in keyphrase_candidates("A brown dog sits on a red sofa next to a lamp", "rules")] == \
        ["brown dog", "red sofa", "lamp"]
    # "light" names the object where it closes the phrase, and is its colour before a noun
    assert [c.text for c in keyphrase_candidates("A light blue car under a bright light. It is light.", "rules")] == \
        ["light blue car", "bright light"]
    # one node per stemmed form, at every occurrence; a possessive ends the phrase; positions count
    # tokens as pke does ('s is one)
    dogs = keyphrase_candidates("A dog and two dogs near the man's dog.", "rules")
    assert [(c.text, c.stems, c.offsets) for c in dogs] == [("dog", ("dog",), [1, 4, 9]), ("man", ("man",), [7])]
    assert rank_keywords("It is on the left.", k=3) == []


def test_ranking_equals_a_hand_computation():
    """"A big dog and a cat on a sofa. The dog sleeps.", phi = 1, gamma = 0 (no vectors),
    lambda = 0.05, alpha = 1.1, a = 0.85, the paper's normalisation.

    tokens:     A0 big1 dog2 and3 a4 cat5 on6 a7 sofa8 .9 The10 dog11 sleeps12 .13 (pke's positions)
    candidates: "big dog" l=1 (2 words), "cat" l=5, "sofa" l=8, "dog" l=11
    topics:     {big dog, dog} (Jaccard distance 1 - 1/2 = 0.5 <= 0.74), {cat}, {sofa}
    gaps d:     big dog-cat 5-1-(2-1) = 3, big dog-sofa 6, cat-sofa 3, cat-dog 6, sofa-dog 3;
                no edge big dog-dog (one topic)
    theta = 1/(1+d): 1/4, 1/7, 1/4, 1/7, 1/4
    tau:        "big dog" opens its topic: the edges into it from cat and sofa gain
                alpha e^(1/(1+1)) * mu(dog, .) = 1.8136 * (1/7, 1/4)
    omega_ij = tau_ij * exp(-0.05 l_i); r = 0.15 + 0.85 * sum_j omega_ij r_j / sum_m omega_jm
    scores:     big dog 2.2565, cat 1.1551, sofa 1.0341, dog 0.6058
    """
    lam, alpha, a = 0.05, 1.1, 0.85
    cands, topic, omega = multipartite_graph("A big dog and a cat on a sofa. The dog sleeps.", tagger="rules",
                                             lam=lam, alpha=alpha)
    assert [(c.text, c.offsets) for c in cands] == [("big dog", [1]), ("cat", [5]), ("sofa", [8]), ("dog", [11])]
    assert topic == [0, 1, 2, 0]
    mu = torch.zeros(4, 4, dtype=torch.float64)
    for i, j, theta in [(0, 1, 1 / 4), (0, 2, 1 / 7), (1, 2, 1 / 4), (1, 3, 1 / 7), (2, 3, 1 / 4)]:
        mu[i, j] = mu[j, i] = theta
    tau = mu.clone()
    boost = alpha * math.exp(1 / (1 + 1))
    tau[0, 1] += boost * mu[3, 1]
    tau[0, 2] += boost * mu[3, 2]
    kappa = torch.exp(-lam * torch.tensor([1.0, 5.0, 8.0, 11.0], dtype=torch.float64))
    want = tau * kappa[:, None]
    torch.testing.assert_close(omega, want, rtol=0, atol=1e-12)
    assert omega[0, 3] == omega[3, 0] == 0  # one topic: no edge
    assert omega[0, 1] / kappa[0] > omega[1, 0] / kappa[1]  # the adjustment only feeds the topic's first

    r = [1.0] * 4  # the paper's iteration, written out
    z = [sum(want[j, m].item() for m in range(4)) for j in range(4)]
    for _ in range(300):
        r = [(1 - a) + a * sum(want[i, j].item() * r[j] / z[j] for j in range(4)) for i in range(4)]
    scores = pagerank(omega, a=a)
    torch.testing.assert_close(scores, torch.tensor(r, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(scores, torch.tensor([2.2565, 1.1551, 1.0341, 0.6058], dtype=torch.float64),
                               rtol=0, atol=1e-4)
    assert rank_keywords("A big dog and a cat on a sofa. The dog sleeps.", k=4, tagger="rules") == \
        ["big dog", "cat", "sofa", "dog"]


def test_topics_group_shared_stems_and_cut_their_edges():
    # "tennis racket" and "racket" share a stem: one topic, no edge between them. "tennis ball"
    # shares "tennis" with the first (distance 1 - 1/3) but nothing with "racket" (1): average
    # linkage puts it (0.667 + 1) / 2 = 0.83 > 0.74 away, so it keeps its own topic (single
    # linkage would have merged it)
    text = "A tennis racket and a tennis ball lie by the racket."
    cands, topic, omega = multipartite_graph(text, tagger="rules")
    assert [c.text for c in cands] == ["tennis racket", "tennis ball", "racket"]
    assert topic == [0, 1, 0]
    assert omega[0, 2] == omega[2, 0] == 0 and (omega[:, 1] > 0).sum() == 2 and (omega[1] > 0).sum() == 2
    # a quarter of the stems in common is not enough: distance 1 - 1/4 = 0.75 > 0.74
    assert topics([("big", "brown", "dog"), ("dog", "bed")]) == [0, 1]
    assert topics([("brown", "dog"), ("dog", "bed")]) == [0, 0]  # 1 - 1/3
    assert topics([("dog",), ("dog",)]) == [0, 0] and topics([]) == [] and topics([("cat",)]) == [0]
    # plurals share a stem (the rules' plural stemmer; Porter's where nltk tags)
    assert topics([c.stems for c in keyphrase_candidates("The dishes and a dish rack.", "rules")]) == [0, 0]


def test_semantic_term_is_clamped_and_stays_across_topics():
    """mu_ij = theta_ij + gamma * max(cos, 0): opposite vectors add nothing (a negative weight has no
    place in a random walk), and candidates of one topic stay unlinked whatever their vectors."""
    text = "A big dog and a cat on a sofa. The dog sleeps."
    base = multipartite_graph(text, tagger="rules")[2]
    same = {"big dog": [1.0, 0.0], "cat": [1.0, 0.0], "sofa": [-1.0, 0.0], "dog": [1.0, 0.0]}
    omega = multipartite_graph(text, tagger="rules", gamma=0.5, vectors=lambda p: torch.tensor(same[p]))[2]
    assert omega[0, 3] == omega[3, 0] == 0  # big dog, dog: one topic, cos 1, still no edge
    assert omega[2, 1] == base[2, 1] and omega[1, 3] > base[1, 3]  # sofa-cat: cos -1 adds 0; cat-dog: cos 1 adds
    torch.testing.assert_close(omega[1, 3] - base[1, 3], 0.5 * torch.exp(torch.tensor(-0.05 * 5, dtype=torch.float64)))


def test_topics_match_scipy_average_linkage():
    """scipy's fcluster(linkage(jaccard, "average"), 0.74, "distance"), as pke calls it."""
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    distance = pytest.importorskip("scipy.spatial.distance")
    stems = [("tennis", "racket"), ("tennis", "ball"), ("racket",), ("red", "ball", "cap"), ("cap",),
             ("dog",), ("brown", "dog", "bed"), ("ball",)]
    vocab = sorted({w for s in stems for w in s})
    x = torch.tensor([[w in s for w in vocab] for s in stems], dtype=torch.bool).numpy()
    flat = hierarchy.fcluster(hierarchy.linkage(distance.pdist(x, "jaccard"), "average"), t=0.74, criterion="distance")
    ours = topics(stems)
    for i in range(len(stems)):
        for j in range(len(stems)):
            assert (ours[i] == ours[j]) == (flat[i] == flat[j]), (stems[i], stems[j])


def test_detector_is_asked_for_the_whole_phrase(tmp_path):
    """prepare mfpo's path: the ranked keyphrases reach the detector's processor as they are."""
    asked = []

    class Inputs(dict):
        def to(self, device):
            return self

    def processor(text, images, **kw):
        asked.append(text)
        return Inputs()
    processor.post_process_grounded_object_detection = lambda out, **kw: [{"boxes": torch.zeros(0, 4)}]

    class Detector:  # finds nothing
        device = "cpu"

        def __call__(self, **inputs):
            return None
    detector = Detector()
    Image.new("RGB", (16, 16)).save(tmp_path / "0.png")
    rows = [{"id": "a", "image": str(tmp_path / "0.png"), "chosen": "A traffic light and a fire hydrant on a street"}]
    args = types.SimpleNamespace(k=3, keywords="multipartite", tagger="rules", seed=0, regions="grounded", noise_step=500)
    stats = Counter()
    out = build.mfpo_rows(rows, args, str(tmp_path), stats, {"grounding": Grounding(detector, processor)})
    assert sorted(asked[0][0]) == ["fire hydrant", "street", "traffic light"] and len(asked[0]) == 1
    assert out[0]["keywords"] == asked[0][0] and out[0]["region"] == "global"  # nothing found: the whole image
    args.keywords = "words"
    build.mfpo_rows(rows, args, str(tmp_path), stats, {"grounding": Grounding(detector, processor)})
    assert all(" " not in w for w in asked[1][0])  # the word graph asks for single words


# ---- the word graph (graph="words"), the paper's PageRank, the tagger -------------------------

def test_word_graph_picks_the_object_nouns():
    text = "A brown dog sits on a red sofa next to a lamp"
    top = rank_keywords(text, k=10, graph="words")
    assert top[:3] == ["dog", "sofa", "lamp"]
    assert "sits" not in top and "next" not in top and "brown" not in top
    assert rank_keywords(text, k=3, graph="words") == ["dog", "sofa", "lamp"]  # k cuts the ranking, it does not change it
    # repeated and central words rank first; word vectors shift the ranking but keep it nouns
    assert rank_keywords("A cat and a dog. The cat sleeps near the dog and the cat purrs.", k=1, graph="words") == ["cat"]
    vec = {w: torch.tensor([1.0, float(i)]) for i, w in enumerate(words(text))}
    assert set(rank_keywords(text, k=3, graph="words", vectors=vec.__getitem__)) == {"dog", "sofa", "lamp"}
    assert rank_keywords("It is on the left.", k=3, graph="words") == []
    with pytest.raises(ValueError):
        rank_keywords(text, graph="nodes")


def test_pagerank_paper_vs_column_by_hand():
    """Three words at token positions 0, 2, 4 (the commas count), phi = 1, lambda = 0.2, a = 0.85,
    no word vectors.

    theta = 1 / (1 + |l_i - l_j|):  [[0, 1/3, 1/5], [1/3, 0, 1/3], [1/5, 1/3, 0]]
    kappa = exp(-0.2 l_i) = [1, 0.6703, 0.4493], omega_ij = theta_ij * kappa_i (row i scaled), so
    omega is asymmetric and its row sums (the paper's sum_m omega_jm) differ from its column sums.
    """
    a, lam = 0.85, 0.2
    cands, omega = word_graph("cat, dog, bird", lam=lam)
    assert cands == ["cat", "dog", "bird"]
    theta = torch.tensor([[0, 1 / 3, 1 / 5], [1 / 3, 0, 1 / 3], [1 / 5, 1 / 3, 0]], dtype=torch.float64)
    kappa = torch.tensor([math.exp(-lam * l) for l in (0, 2, 4)], dtype=torch.float64)
    torch.testing.assert_close(omega, theta * kappa[:, None])
    rows = torch.tensor([8 / 15, 2 / 3 * kappa[1].item(), 8 / 15 * kappa[2].item()], dtype=torch.float64)  # sum_m omega_jm
    torch.testing.assert_close(omega.sum(1), rows)
    assert not torch.allclose(omega.sum(0), rows)  # the column sums sum_i omega_ij are another thing

    def fixed_point(z):  # r = (1 - a) + a W r, W_ij = omega_ij / z_j  <=>  (I - a W) r = (1 - a) 1
        return torch.linalg.solve(torch.eye(3, dtype=torch.float64) - a * omega / z[None, :],
                                  torch.full((3,), 1 - a, dtype=torch.float64))
    paper, column = fixed_point(omega.sum(1)), fixed_point(omega.sum(0))
    torch.testing.assert_close(pagerank(omega, a=a), paper)  # the default is the paper's form
    torch.testing.assert_close(pagerank(omega, a=a, norm="paper"), paper)
    # networkx's pagerank (pke's) is the column form's fixed point over n, to its tolerance (n * 1e-6 in all)
    torch.testing.assert_close(pagerank(omega, a=a, norm="column"), column / 3, atol=1e-6, rtol=0)
    # the numbers, and what differs: the paper's form favours the first word, the column form the central one
    torch.testing.assert_close(paper, torch.tensor([1.3976, 1.1950, 0.6906], dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(column / 3, torch.tensor([0.3729, 0.3848, 0.2423], dtype=torch.float64), atol=1e-4,
                               rtol=0)
    assert column.sum().item() == pytest.approx(3.0)  # column-stochastic: a Markov chain, ranks sum to n
    assert paper.sum().item() == pytest.approx(3.2832, abs=1e-4)
    # the paper's form is the undecayed PageRank restarting in proportion to 1 / kappa, times kappa
    p = theta / theta.sum(0)
    undecayed = torch.linalg.solve(torch.eye(3, dtype=torch.float64) - a * p, (1 - a) / kappa)
    torch.testing.assert_close(paper, kappa * undecayed)
    for graph in ("words", "multipartite"):  # three one-word topics: both graphs are this one
        assert rank_keywords("cat, dog, bird", k=1, lam=lam, graph=graph) == ["cat"]
        assert rank_keywords("cat, dog, bird", k=1, lam=lam, norm="column", graph=graph) == ["dog"]
    torch.testing.assert_close(multipartite_graph("cat, dog, bird", lam=lam)[2], omega)
    with pytest.raises(ValueError):
        pagerank(omega, norm="rows")


def test_pagerank_paper_form_reaches_its_fixed_point_on_long_answers():
    """exp(-lambda l) spans e^-10 over 200 words: the paper's matrix is K P K^-1, far from
    column-stochastic (its scores reach ~800, not ~1), yet the iteration reaches the fixed point."""
    text = " ".join(f"w{chr(97 + i % 26)}{chr(97 + i // 26)}x" for i in range(200))
    _, omega = word_graph(text)
    z = omega.sum(1)
    want = torch.linalg.solve(torch.eye(200, dtype=torch.float64) - 0.85 * omega / z[None, :],
                              torch.full((200,), 0.15, dtype=torch.float64))
    torch.testing.assert_close(pagerank(omega), want, rtol=1e-8, atol=0)


CAPTIONS = {  # caption: (nouns that may lead, verbs that must never be keywords)
    "A man rides a horse and a woman holds an umbrella while a dog runs beside them.":
        ({"man", "horse", "woman", "umbrella", "dog"}, {"rides", "holds", "runs"}),
    "A girl in a red dress waves her hand at the boats.": ({"girl", "dress", "hand", "boats"}, {"waves"}),
    "A man in a suit strums a guitar on the stage.": ({"man", "suit", "guitar", "stage"}, {"strums"}),
    "A bird flies over the lake at sunset.": ({"bird", "lake", "sunset"}, {"flies"}),
}


@pytest.mark.parametrize("graph", ["multipartite", "words"])
@pytest.mark.parametrize("tagger", ["auto", "rules"])  # auto: nltk's tagger where installed, else the rules
@pytest.mark.parametrize("caption", CAPTIONS)
def test_verbs_are_never_keywords(caption, tagger, graph):
    nouns, verbs = CAPTIONS[caption]
    top = rank_keywords(caption, k=3, tagger=tagger, graph=graph)
    assert len(top) == 3 and {p.split()[-1] for p in top} <= nouns  # a keyphrase ends on its noun
    assert not {w for p in rank_keywords(caption, k=100, tagger=tagger, graph=graph) for w in p.split()} & verbs


def test_rules_read_the_sentence_shape():
    # unknown verbs: "subject VERB determiner" and "a NOUN VERBs <preposition>"
    assert rank_keywords("A chef slices an onion while a cat naps on the counter.", k=10, tagger="rules", graph="words") == \
        ["chef", "onion", "cat", "counter"]
    # the same word as an object: after a determiner, an adjective or a preposition
    assert "waves" in rank_keywords("The surfer rides the big waves near the shore.", k=10, tagger="rules", graph="words")
    assert "flies" in rank_keywords("A frog catches the flies.", k=10, tagger="rules", graph="words")
    assert rank_keywords("The man's dog chases a frisbee.", k=10, tagger="rules", graph="words") == ["dog", "man", "frisbee"]
    # a compound noun is no subject-verb pair: "his tennis shoes", "granite countertops a sink"
    assert noun_flags("His tennis shoes lie on the floor.", "rules") == [False, True, True, False, False, False, True]
    kitchen = "A kitchen with granite countertops a sink and a stove."
    assert "countertops" in rank_keywords(kitchen, k=10, tagger="rules", graph="words")


def test_is_noun_suffixes():
    for w in ["bed", "building", "ceiling", "fish", "dish", "ring", "string", "olive", "butterfly", "seed"]:
        assert is_noun(w), w
    for w in ["running", "parked", "quickly", "reddish", "active", "famous", "colorful", "rides", "red", "the"]:
        assert not is_noun(w), w


def test_rules_stand_in_when_no_tagger_is_installed(monkeypatch):
    """The same keywords with or without nltk: without a tagger, "auto" is the rules."""
    monkeypatch.setattr(tagging, "nltk_tagger", lambda: None)
    for caption in [*CAPTIONS, "A chef slices an onion while a cat naps on the counter."]:
        assert noun_flags(caption) == noun_flags(caption, "rules")
        for graph in ("multipartite", "boudin", "words"):
            assert rank_keywords(caption, k=10, graph=graph) == rank_keywords(caption, k=10, tagger="rules", graph=graph)
    with pytest.raises(RuntimeError, match="nltk"):
        rank_keywords("A dog.", tagger="nltk")
    with pytest.raises(ValueError):
        rank_keywords("A dog.", tagger="spacy")


def test_a_tagger_when_installed_has_the_last_word(monkeypatch):
    seen = []

    def fake_pos_tag(tokens):  # calls every word a noun except "umbrella" (a verb) and "parked" (an adjective)
        seen.append(tokens)
        return [(t, {"umbrella": "VB", "parked": "JJ"}.get(t, "NN")) for t in tokens]
    monkeypatch.setattr(tagging, "nltk_tagger", lambda: fake_pos_tag)
    text = "The man's dog holds an umbrella, and a hat."
    # the tagger's nouns stand ("holds" too, which the rules would call a verb); only stop words never are
    assert rank_keywords(text, k=10, graph="words") == ["dog", "holds", "man", "hat"]
    assert seen[-1] == ["The", "man", "'s", "dog", "holds", "an", "umbrella", ",", "and", "a", "hat", "."]
    assert "umbrella" in rank_keywords(text, k=10, tagger="rules", graph="words")
    assert [c.text for c in keyphrase_candidates(text)] == ["man", "dog holds", "hat"]  # its nouns, as it says
    # the tagger's adjectives join the phrase; the rules know only listed ones and adjective endings
    assert [c.text for c in keyphrase_candidates("A parked car.")] == ["parked car"]
    assert [c.text for c in keyphrase_candidates("A parked car.", "rules")] == ["car"]
