"""graph="boudin": Boudin's MultipartiteRank as pke computes it, checked against pke itself.

Every expected value below was computed once with pke (github.com/boudinfl/pke, commit 69871ff,
its 2.0.0; networkx 3.6.1, scipy 1.17.1, spaCy 3.8.18's stop list, nltk 3.10.4's Porter stems) as
Boudin's README calls it: MultipartiteRank(); load_document(<the tagged sentences below>,
language="en", normalization="stemming"); candidate_selection(); candidate_weighting(alpha=1.1,
threshold=0.74, method="average"); get_n_best(10). The sentences are "word/TAG/stem" tokens, as pke
held them after load_document.
"""
import math

import pytest
import torch

from mmpo.prepare import keywords as K

PKE = {
    # a topic of two ("tennis racket", "tennis court"): the weight adjustment boosts edges into its first
    "tennis": dict(
        sentences=["a/DET/a man/NOUN/man holds/VERB/hold a/DET/a tennis/NOUN/tenni racket/NOUN/racket on/ADP/on "
                   "a/DET/a tennis/NOUN/tenni court/NOUN/court while/X/while another/DET/anoth player/NOUN/player "
                   "waits/VERB/wait near/ADP/near the/DET/the net/NOUN/net ./PUNCT/."],
        candidates=[("man", [1]), ("tenni racket", [4]), ("tenni court", [8]), ("player", [12]), ("net", [16])],
        topics=[["tenni court", "tenni racket"], ["man"], ["net"], ["player"]],
        best=[("tennis racket", 0.28255093857232844), ("man", 0.2218574143718603), ("player", 0.21473972258051635),
              ("net", 0.14621088615952782), ("tennis court", 0.13464103831576701)]),
    # "several cars": "several" is a spaCy stop word, so the whole candidate goes; a 3-word candidate
    "hydrant": dict(
        sentences=["several/ADJ/sever cars/NOUN/car wait/VERB/wait at/ADP/at a/DET/a traffic/NOUN/traffic "
                   "light/NOUN/light next/ADP/next to/ADP/to a/DET/a red/ADJ/red fire/NOUN/fire hydrant/NOUN/hydrant "
                   "on/ADP/on the/DET/the street/NOUN/street ./PUNCT/."],
        candidates=[("traffic light", [5]), ("red fire hydrant", [10]), ("street", [15])],
        topics=[["red fire hydrant"], ["street"], ["traffic light"]],
        best=[("red fire hydrant", 0.4118205110663671), ("street", 0.3201314961547406),
              ("traffic light", 0.26804799277889185)]),
    # two sentences (offsets run on across them); "others" is a stop word
    "ducks": dict(
        sentences=["two/NUM/two ducks/NOUN/duck swim/VERB/swim in/ADP/in a/DET/a pond/NOUN/pond ./PUNCT/.",
                   "others/NOUN/other stand/VERB/stand on/ADP/on the/DET/the grass/NOUN/grass near/ADP/near a/DET/a "
                   "wooden/ADJ/wooden bench/NOUN/bench ./PUNCT/."],
        candidates=[("duck", [1]), ("pond", [5]), ("grass", [11]), ("wooden bench", [14])],
        topics=[["duck"], ["grass"], ["pond"], ["wooden bench"]],
        best=[("grass", 0.28372003809978913), ("pond", 0.2550574463939314), ("wooden bench", 0.24953990396012218),
              ("ducks", 0.21168261154615725)]),
}
TEXTS = {"tennis": "A man holds a tennis racket on a tennis court while another player waits near the net.",
         "hydrant": "Several cars wait at a traffic light next to a red fire hydrant on the street.",
         "ducks": "Two ducks swim in a pond. Others stand on the grass near a wooden bench."}


def tagged(case):
    return [[tuple(tok.rsplit("/", 2)) for tok in s.split()] for s in PKE[case]["sentences"]]


def topic_sets(cands, topic):
    return sorted(sorted(c.key for c, t in zip(cands, topic) if t == k) for k in set(topic))


@pytest.mark.parametrize("case", PKE)
def test_candidates_topics_and_scores_are_pkes(case):
    want = PKE[case]
    cands = K.candidates(tagged(case))
    assert [(c.key, c.offsets) for c in cands] == want["candidates"]
    assert topic_sets(cands, K.topics([c.stems for c in cands])) == \
        sorted(sorted(t) for t in want["topics"])
    got = K.boudin_rank(tagged(case))
    assert [p for p, _ in got] == [p for p, _ in want["best"]]
    assert [s for _, s in got] == pytest.approx([s for _, s in want["best"]], abs=1e-12)


def test_the_weight_adjustment_boosts_edges_into_a_topics_first_member_as_pke():
    """pke's edge weights for the tennis text, before -> after weight_adjustment: only the edges
    into "tennis racket" (the first of its topic, offset 4) change, each by 1.1 e^(1/5) times the
    edge from its topic-mate "tennis court" to the same source."""
    cands = K.candidates(tagged("tennis"))
    omega = K.edge_weights(cands, K.topics([c.stems for c in cands]), theta="boudin", lam=0.0)  # [i, j]: j -> i
    at = {c.key: i for i, c in enumerate(cands)}
    for src, before, after in [("man", 0.3333333333333333, 0.5252680524727886),
                               ("player", 0.14285714285714285, 0.5907048208492052),
                               ("net", 0.09090909090909091, 0.2828438100485462)]:
        assert omega[at["tenni racket"], at[src]].item() == pytest.approx(after, abs=1e-15)
        assert omega[at[src], at["tenni racket"]].item() == pytest.approx(before, abs=1e-15)  # out of it: unchanged
    assert omega[at["tenni court"], at["tenni racket"]] == 0  # within a topic: no edge


@pytest.mark.parametrize("keys, groups", [
    # Jaccard ties at 0.5: scipy's nearest-neighbour chain pairs "court" with "tennis court"
    (["tennis", "tennis court", "tennis racket", "court"], [["court", "tennis court"], ["tennis", "tennis racket"]]),
    (["red car", "car", "red", "blue car", "blue"], [["blue", "blue car"], ["car", "red car"], ["red"]]),
])
def test_topics_break_ties_as_scipys_average_linkage(keys, groups):
    """scipy 1.17.1's fcluster(linkage(pdist(X, "jaccard"), "average"), 0.74, "distance") on these
    candidates (sorted, X their stems) gives ``groups``."""
    topic = K.topics([tuple(k.split()) for k in keys])
    assert sorted(sorted(k for k, t in zip(keys, topic) if t == g) for g in set(topic)) == groups


@pytest.mark.parametrize("case", ["tennis", "ducks"])
def test_rank_keywords_reads_a_text_as_pke_reads_its_tokens(case):
    """From the text: mmpo's tokens (punctuation its own token) and rule tags give pke's offsets
    and candidates, hence its scores (the stems differ, tennis/tenni, the grouping does not). (The
    rules no longer call "several" an adjective: the hydrant text keeps "cars", see below.)"""
    sentences = K.tagged_sentences(TEXTS[case], tagger="rules")
    assert [w.lower() for s in sentences for w, _, _ in s] == [t.split("/")[0] for s in PKE[case]["sentences"]
                                                               for t in s.split()]
    got = K.boudin_rank(sentences)
    assert [p for p, _ in got] == [p for p, _ in PKE[case]["best"]]
    assert [s for _, s in got] == pytest.approx([s for _, s in PKE[case]["best"]], abs=1e-12)
    assert K.rank_keywords(TEXTS[case], 2, graph="boudin", tagger="rules") == [p for p, _ in PKE[case]["best"][:2]]


def test_no_candidate_and_one_candidate():
    assert K.boudin_rank([[("it", "PRON", "it"), ("rains", "VERB", "rain")]]) == []
    assert K.boudin_rank([[("a", "DET", "a"), ("dog", "NOUN", "dog")]]) == [("dog", 1.0)]  # networkx: 1 / N


def test_quantifiers_start_no_candidate_and_objects_stay_whole():
    """The rules tag "several", "many", "few", "others" as no noun or adjective, so they neither
    start a candidate nor, in pke's filter, drop the object after them; two-word objects stay whole."""
    assert "cars" in K.rank_keywords(TEXTS["hydrant"], 10, graph="boudin", tagger="rules")
    for text, whole in [("The living room has a small trash can and a flat screen TV.",
                         ["living room", "small trash can", "flat screen tv"]),
                        ("A skier rides the ski lift past a traffic light and a fire hydrant.",
                         ["skier", "ski lift", "traffic light", "fire hydrant"]),
                        ("Many people and a few dogs sit near others with a tennis racket.",
                         ["people", "dogs", "tennis racket"])]:
        assert [c.text for c in K.keyphrase_candidates(text, "rules")] == whole
    # pke's own filter (graph="boudin") drops "small trash can" whole: "can" is a spaCy stop word
    assert "small trash can" not in K.rank_keywords("A small trash can stands by the wall.", 10, graph="boudin",
                                                    tagger="rules")


# ---- the paper's form on the same graph: each of MFPO's terms alone, by hand ---------------------

def tennis_graph(**terms):
    cands = K.candidates(tagged("tennis"))
    omega = K.edge_weights(cands, K.topics([c.stems for c in cands]), **{"theta": "boudin", "lam": 0.0, **terms})
    return {c.key: i for i, c in enumerate(cands)}, omega


def test_with_every_mfpo_term_off_the_default_form_is_pkes():
    words = " ".join(t.split("/")[0] for t in PKE["tennis"]["sentences"][0].split())
    ranked = K.rank_keywords(words, 5, theta="boudin", lam=0.0, norm="column", noun_ending=False, compounds=False,
                             tagger="rules")
    assert ranked == K.rank_keywords(words, 5, graph="boudin", tagger="rules") == [p for p, _ in PKE["tennis"]["best"]]


def test_theta_mfpo_alone():
    """theta = 1 / (1 + gap): man (offset 1) - tennis racket (4): gap 3, 1/4 (pke: 1/3); tennis
    court (8, 2 words) - man: gap 7, 1/8; the edge man -> tennis racket gains 1.1 e^(1/5) * 1/8."""
    at, omega = tennis_graph(theta="mfpo")
    assert omega[at["man"], at["tenni racket"]].item() == pytest.approx(1 / 4, abs=1e-15)  # out of racket: no boost
    assert omega[at["tenni racket"], at["man"]].item() == pytest.approx(1 / 4 + 1.1 * math.exp(1 / 5) / 8, abs=1e-15)


def test_lam_alone_decays_every_edge_by_its_target():
    at, omega = tennis_graph(lam=0.05)
    assert omega[at["tenni racket"], at["man"]].item() == pytest.approx(0.5252680524727886 * math.exp(-0.05 * 4),
                                                                        abs=1e-15)
    assert omega[at["man"], at["tenni racket"]].item() == pytest.approx(1 / 3 * math.exp(-0.05 * 1), abs=1e-15)


def test_gamma_alone_adds_the_clamped_cosine_before_the_boost():
    vecs = {"man": [1.0, 0.0], "tennis racket": [1.0, 0.0], "tennis court": [0.0, 1.0], "player": [1.0, 1.0],
            "net": [-1.0, 0.0]}
    at, omega = tennis_graph(vectors=lambda p: torch.tensor(vecs[p]), gamma=0.5)
    # mu(man, player) = 1/11 + 0.5 cos 45 deg; man - net: cos -1 adds nothing
    assert omega[at["player"], at["man"]].item() == pytest.approx(1 / 11 + 0.5 / math.sqrt(2), abs=1e-12)
    assert omega[at["net"], at["man"]].item() == pytest.approx(1 / 15, abs=1e-15)
    # into the topic's first: mu(racket, man) = 1/3 + 0.5, plus the boost from mu(court, man) = 1/7 + 0
    assert omega[at["tenni racket"], at["man"]].item() == pytest.approx(1 / 3 + 0.5 + 1.1 * math.exp(1 / 5) / 7,
                                                                        abs=1e-12)


def test_norm_paper_alone_is_the_papers_fixed_point():
    """r_i = (1 - a) + a sum_j omega_ij r_j / z_j, z_j = sum_m omega_jm, solved directly."""
    _, omega = tennis_graph()
    z = omega.sum(1)
    want = torch.linalg.solve(torch.eye(len(z), dtype=torch.float64) - 0.85 * omega / z[None, :],
                              torch.full((len(z),), 0.15, dtype=torch.float64))
    torch.testing.assert_close(K.pagerank(omega, norm="paper"), want, rtol=1e-8, atol=0)


def test_noun_ending_and_compounds_alone():
    sky = [[("the", "DET", "the"), ("sky", "NOUN", "sky"), ("is", "VERB", "is"), ("blue", "ADJ", "blue"), (",", "PUNCT", ","),
            ("a", "DET", "a"), ("dress", "NOUN", "dress"), ("red", "ADJ", "red")]]
    assert [c.text for c in K.candidates(sky)] == ["sky", "blue", "dress red"]  # pke's
    assert [c.text for c in K.candidates(sky, noun_ending=True)] == ["sky", "dress"]
    can = [[("a", "DET", "a"), ("small", "ADJ", "small"), ("trash", "NOUN", "trash"), ("can", "NOUN", "can")]]
    assert K.candidates(can) == []  # pke's: "can" is a spaCy stop word
    assert [c.text for c in K.candidates(can, compounds=True)] == ["small trash can"]
