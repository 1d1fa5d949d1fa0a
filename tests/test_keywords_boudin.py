"""graph="boudin": Boudin's MultipartiteRank as pke computes it, checked against pke itself.

Every expected value below was computed once with pke (github.com/boudinfl/pke, commit 69871ff,
its 2.0.0; networkx 3.6.1, scipy 1.17.1, spaCy 3.8.18's stop list, nltk 3.10.4's Porter stems) as
Boudin's README calls it: MultipartiteRank(); load_document(<the tagged sentences below>,
language="en", normalization="stemming"); candidate_selection(); candidate_weighting(alpha=1.1,
threshold=0.74, method="average"); get_n_best(10). The sentences are "word/TAG/stem" tokens, as pke
held them after load_document.
"""
import pytest

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
    cands = K.boudin_candidates(tagged(case))
    assert [(c.key, c.offsets) for c in cands] == want["candidates"]
    assert topic_sets(cands, K.average_linkage_topics([c.key for c in cands], [c.stems for c in cands])) == \
        sorted(sorted(t) for t in want["topics"])
    got = K.boudin_rank(tagged(case))
    assert [p for p, _ in got] == [p for p, _ in want["best"]]
    assert [s for _, s in got] == pytest.approx([s for _, s in want["best"]], abs=1e-12)


def test_the_weight_adjustment_boosts_edges_into_a_topics_first_member_as_pke():
    """pke's edge weights for the tennis text, before -> after weight_adjustment: only the edges
    into "tennis racket" (the first of its topic, offset 4) change, each by 1.1 e^(1/5) times the
    edge from its topic-mate "tennis court" to the same source."""
    cands = K.boudin_candidates(tagged("tennis"))
    topic = K.average_linkage_topics([c.key for c in cands], [c.stems for c in cands])
    w = K.boudin_graph(cands, topic)
    at = {c.key: i for i, c in enumerate(cands)}
    for src, before, after in [("man", 0.3333333333333333, 0.5252680524727886),
                               ("player", 0.14285714285714285, 0.5907048208492052),
                               ("net", 0.09090909090909091, 0.2828438100485462)]:
        assert w[at[src]][at["tenni racket"]] == pytest.approx(after, abs=1e-15)
        assert w[at["tenni racket"]][at[src]] == pytest.approx(before, abs=1e-15)  # out of it: unchanged
    assert w[at["tenni racket"]][at["tenni court"]] == 0  # within a topic: no edge


@pytest.mark.parametrize("keys, groups", [
    # Jaccard ties at 0.5: scipy's nearest-neighbour chain pairs "court" with "tennis court"
    (["tennis", "tennis court", "tennis racket", "court"], [["court", "tennis court"], ["tennis", "tennis racket"]]),
    (["red car", "car", "red", "blue car", "blue"], [["blue", "blue car"], ["car", "red car"], ["red"]]),
])
def test_topics_break_ties_as_scipys_average_linkage(keys, groups):
    """scipy 1.17.1's fcluster(linkage(pdist(X, "jaccard"), "average"), 0.74, "distance") on these
    candidates (sorted, X their stems) gives ``groups``."""
    topic = K.average_linkage_topics(keys, [tuple(k.split()) for k in keys])
    assert sorted(sorted(k for k, t in zip(keys, topic) if t == g) for g in set(topic)) == groups


@pytest.mark.parametrize("case", PKE)
def test_rank_keywords_reads_a_text_as_pke_reads_its_tokens(case):
    """From the text: mmpo's tokens (punctuation its own token) and rule tags give pke's offsets
    and candidates, hence its scores (the stems differ, tennis/tenni, the grouping does not)."""
    sentences = K.boudin_sentences(TEXTS[case], tagger="rules")
    assert [w.lower() for s in sentences for w, _, _ in s] == [t.split("/")[0] for s in PKE[case]["sentences"]
                                                               for t in s.split()]
    got = K.boudin_rank(sentences)
    assert [p for p, _ in got] == [p for p, _ in PKE[case]["best"]]
    assert [s for _, s in got] == pytest.approx([s for _, s in PKE[case]["best"]], abs=1e-12)
    assert K.rank_keywords(TEXTS[case], 2, graph="boudin", tagger="rules") == [p for p, _ in PKE[case]["best"][:2]]


def test_no_candidate_and_one_candidate():
    assert K.boudin_rank([[("it", "PRON", "it"), ("rains", "VERB", "rain")]]) == []
    assert K.boudin_rank([[("a", "DET", "a"), ("dog", "NOUN", "dog")]]) == [("dog", 1.0)]  # networkx: 1 / N
