"""MFPO's keyword selection (sec. 3.1): the word graph, the paper's PageRank, nouns only."""
import math

import pytest
import torch

from mmpo.prepare import keywords
from mmpo.prepare.keywords import is_noun, noun_flags, pagerank, rank_keywords, word_graph, words


def test_keywords_pick_the_object_nouns():
    text = "A brown dog sits on a red sofa next to a lamp"
    top = rank_keywords(text, k=10)
    assert top[:3] == ["dog", "sofa", "lamp"]
    assert "sits" not in top and "next" not in top and "brown" not in top
    assert rank_keywords(text, k=3) == ["dog", "sofa", "lamp"]  # k cuts the ranking, it does not change it
    # repeated and central words rank first; word vectors shift the ranking but keep it nouns
    assert rank_keywords("A cat and a dog. The cat sleeps near the dog and the cat purrs.", k=1) == ["cat"]
    vec = {w: torch.tensor([1.0, float(i)]) for i, w in enumerate(words(text))}
    assert set(rank_keywords(text, k=3, vectors=vec.__getitem__)) == {"dog", "sofa", "lamp"}
    assert rank_keywords("It is on the left.", k=3) == []


def test_pagerank_paper_vs_column_by_hand():
    """Three words at positions 0, 1, 2, phi = 1, lambda = 0.2, a = 0.85, no word vectors.

    theta = 1 / (1 + |l_i - l_j|):  [[0, 1/2, 1/3], [1/2, 0, 1/2], [1/3, 1/2, 0]]
    kappa = exp(-0.2 l_i) = [1, 0.8187, 0.6703], omega_ij = theta_ij * kappa_i (row i scaled), so
    omega is asymmetric and its row sums (the paper's sum_m omega_jm) differ from its column sums.
    """
    a, lam = 0.85, 0.2
    cands, omega = word_graph("cat, dog, bird", lam=lam)
    assert cands == ["cat", "dog", "bird"]
    theta = torch.tensor([[0, 1 / 2, 1 / 3], [1 / 2, 0, 1 / 2], [1 / 3, 1 / 2, 0]], dtype=torch.float64)
    kappa = torch.tensor([math.exp(-lam * l) for l in (0, 1, 2)], dtype=torch.float64)
    torch.testing.assert_close(omega, theta * kappa[:, None])
    rows = torch.tensor([5 / 6, kappa[1].item(), 5 / 6 * kappa[2].item()], dtype=torch.float64)  # sum_m omega_jm
    torch.testing.assert_close(omega.sum(1), rows)
    assert not torch.allclose(omega.sum(0), rows)  # the column sums sum_i omega_ij are another thing

    def fixed_point(z):  # r = (1 - a) + a W r, W_ij = omega_ij / z_j  <=>  (I - a W) r = (1 - a) 1
        return torch.linalg.solve(torch.eye(3, dtype=torch.float64) - a * omega / z[None, :],
                                  torch.full((3,), 1 - a, dtype=torch.float64))
    paper, column = fixed_point(omega.sum(1)), fixed_point(omega.sum(0))
    torch.testing.assert_close(pagerank(omega, a=a), paper)  # the default is the paper's form
    torch.testing.assert_close(pagerank(omega, a=a, norm="paper"), paper)
    torch.testing.assert_close(pagerank(omega, a=a, norm="column"), column)
    # the numbers, and what differs: the paper's form favours the first word, the column form the central one
    torch.testing.assert_close(paper, torch.tensor([1.1414, 1.1261, 0.8020], dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(column, torch.tensor([1.0400, 1.1169, 0.8431], dtype=torch.float64), atol=1e-4, rtol=0)
    assert column.sum().item() == pytest.approx(3.0)  # column-stochastic: a Markov chain, ranks sum to n
    assert paper.sum().item() == pytest.approx(3.0695, abs=1e-4)
    # the paper's form is the undecayed PageRank restarting in proportion to 1 / kappa, times kappa
    p = theta / theta.sum(0)
    undecayed = torch.linalg.solve(torch.eye(3, dtype=torch.float64) - a * p, (1 - a) / kappa)
    torch.testing.assert_close(paper, kappa * undecayed)
    assert rank_keywords("cat, dog, bird", k=1, lam=lam) == ["cat"]
    assert rank_keywords("cat, dog, bird", k=1, lam=lam, norm="column") == ["dog"]
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


@pytest.mark.parametrize("tagger", ["auto", "rules"])  # auto: nltk's tagger where installed, else the rules
@pytest.mark.parametrize("caption", CAPTIONS)
def test_verbs_are_never_keywords(caption, tagger):
    nouns, verbs = CAPTIONS[caption]
    assert set(rank_keywords(caption, k=3, tagger=tagger)) <= nouns
    assert not set(rank_keywords(caption, k=100, tagger=tagger)) & verbs


def test_rules_read_the_sentence_shape():
    # unknown verbs: "subject VERB determiner" and "a NOUN VERBs <preposition>"
    assert rank_keywords("A chef slices an onion while a cat naps on the counter.", k=10, tagger="rules") == \
        ["chef", "onion", "cat", "counter"]
    # the same word as an object: after a determiner, an adjective or a preposition
    assert "waves" in rank_keywords("The surfer rides the big waves near the shore.", k=10, tagger="rules")
    assert "flies" in rank_keywords("A frog catches the flies.", k=10, tagger="rules")
    assert rank_keywords("The man's dog chases a frisbee.", k=10, tagger="rules") == ["dog", "man", "frisbee"]
    # a compound noun is no subject-verb pair: "his tennis shoes", "granite countertops a sink"
    assert noun_flags("His tennis shoes lie on the floor.", "rules") == [False, True, True, False, False, False, True]
    kitchen = "A kitchen with granite countertops a sink and a stove."
    assert "countertops" in rank_keywords(kitchen, k=10, tagger="rules")


def test_is_noun_suffixes():
    for w in ["bed", "building", "ceiling", "fish", "dish", "ring", "string", "olive", "butterfly", "seed"]:
        assert is_noun(w), w
    for w in ["running", "parked", "quickly", "reddish", "active", "famous", "colorful", "rides", "red", "the"]:
        assert not is_noun(w), w


def test_rules_stand_in_when_no_tagger_is_installed(monkeypatch):
    """The same keywords with or without nltk: without a tagger, "auto" is the rules."""
    monkeypatch.setattr(keywords, "nltk_tagger", lambda: None)
    for caption in [*CAPTIONS, "A chef slices an onion while a cat naps on the counter."]:
        assert noun_flags(caption) == noun_flags(caption, "rules")
        assert rank_keywords(caption, k=10) == rank_keywords(caption, k=10, tagger="rules")
    with pytest.raises(RuntimeError, match="nltk"):
        rank_keywords("A dog.", tagger="nltk")
    with pytest.raises(ValueError):
        rank_keywords("A dog.", tagger="spacy")


def test_a_tagger_when_installed_has_the_last_word(monkeypatch):
    seen = []

    def fake_pos_tag(tokens):  # calls every word a noun except "umbrella"
        seen.append(tokens)
        return [(t, "VB" if t == "umbrella" else "NN") for t in tokens]
    monkeypatch.setattr(keywords, "nltk_tagger", lambda: fake_pos_tag)
    text = "The man's dog holds an umbrella, and a hat."
    assert rank_keywords(text, k=10) == ["dog", "man", "hat"]  # "holds" is still no noun: is_noun says so
    assert seen[-1] == ["The", "man", "'s", "dog", "holds", "an", "umbrella", ",", "and", "a", "hat", "."]
    assert "umbrella" in rank_keywords(text, k=10, tagger="rules")
