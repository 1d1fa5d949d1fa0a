"""mmpo.evaluation.metrics and .chair worked by hand: preference and image reliance from log-probs; CHAIR and POPE
read by the reference evaluations' rules; QA's reading of short answers.

CHAIR: Rohrbach et al. 2018's chair.py (LisaAnne/Hallucination) and its standalone Python 3
port (Maxlinn/CHAIR-metric-standalone), and OPERA's variant of it (shikiw/OPERA). POPE: the
parser of POPE's evaluate.py and LLaVA's eval_pope.py. Each example shows one rule; the last CHAIR
test of each variant adds them all up.
"""
import sys
import types

import pytest
import torch

from mmpo.common.chair import (CATEGORIES, chair, chair_answer, object_mentions, object_words, opera_unavailable,
                                   singularize, to_category, tokenize, true_objects)
from mmpo.evaluation.metrics import parse_yes_no, pope, preference_metrics, read_option, reliance_metrics


def test_preference_and_reliance_from_log_probs():
    logps = {"chosen": torch.tensor([-1.0, -2.0, -3.0]), "rejected": torch.tensor([-2.0, -1.0, -4.0])}
    ref = {"chosen": torch.tensor([-1.0, -1.0, -1.0]), "rejected": torch.tensor([-1.0, -1.0, -1.0])}
    # h = (chosen - ref) - (rejected - ref): 1, -1, 1
    assert preference_metrics(logps, ref, ["rejected"], beta=0.5) == pytest.approx(
        {"pref/rejected/logp_acc": 2 / 3, "pref/rejected/reward_acc": 2 / 3, "pref/rejected/reward_margin": 0.5 / 3})
    assert preference_metrics(logps, logps, ["rejected"], 0.1)["pref/rejected/reward_margin"] == 0  # its own reference
    lp = {**logps, "chosen_on_corrupt": torch.tensor([-2.0, -2.0, -2.0]), "rejected_on_corrupt": torch.tensor([-1.0] * 3)}
    assert reliance_metrics("crop", lp) == pytest.approx({"reliance/crop/cond_acc": 1 / 3, "reliance/crop/logp_gap": 0.0})
    # sighted: chosen over rejected on 1 and 3; blind (blank m'): never
    assert reliance_metrics("blank", lp) == pytest.approx({
        "reliance/blank/cond_acc": 1 / 3, "reliance/blank/logp_gap": 0.0, "reliance/sighted_acc": 2 / 3,
        "reliance/blind_acc": 0.0, "reliance/sighted_minus_blind": 2 / 3})


def test_the_synonym_list_has_the_80_coco_categories():
    assert len(CATEGORIES) == 80
    assert CATEGORIES[:3] == ["person", "bicycle", "car"] and CATEGORIES[-1] == "toothbrush"


def test_every_mention_counts():
    # dog, dog, cat: 3 mentions, 1 of them (cat) hallucinated; dog is covered once
    m = chair(["A dog chases a dog and a cat."], [["dog"]])
    assert (m["mentions"], m["hallucinated"]) == (3, 1)
    assert m["chair_i"] == pytest.approx(1 / 3)  # counting each object once would say 1/2
    assert m["chair_s"] == 1.0 and m["coverage"] == 1.0


def test_only_the_reference_synonyms_count():
    # in the list: policeman, cop (person), van, taxi (car), monitor (tv), seat (chair), ball (sports ball)
    assert object_mentions("A policeman, a cop, a van, a taxi, a monitor, a seat, a ball.") == \
        ["person", "person", "car", "car", "tv", "chair", "sports ball"]
    # not in it: a bag is no handbag, a bat no baseball bat, a meter no parking meter
    assert object_mentions("A bag, a bat and a meter.") == []
    assert object_mentions("A parking meter.") == ["parking meter"]


def test_plurals_and_irregular_plurals():
    assert [singularize(w) for w in ["dogs", "people", "men", "women", "children", "mice", "knives", "geese",
                                     "buses", "skis", "glasses", "ponies", "benches", "calves", "sheep"]] == \
        ["dog", "person", "man", "woman", "child", "mouse", "knife", "goose",
         "bus", "ski", "glass", "pony", "bench", "calf", "sheep"]
    assert object_mentions("People, men, women, children, mice, knives, geese, buses, skis, glasses.") == \
        ["person", "person", "person", "person", "mouse", "knife", "bird", "bus", "skis"]  # a glass is no object


def test_the_reference_singularizer_quirks():
    # pattern.en strips any final s: a "bus" becomes "bu" and counts as nothing, only "buses" do
    assert (singularize("bus"), singularize("glass"), singularize("tennis")) == ("bu", "glas", "tenni")
    assert object_mentions("A bus and two buses.") == ["bus"]
    # it returns "doggies" and "collies" unchanged, "canoes" -> "cano", "ties" -> "ty": no object
    assert object_mentions("Doggies, collies, canoes and ties.") == []
    assert object_mentions("A doggie, a collie, a canoe and a tie.") == ["dog", "dog", "boat", "tie"]


def test_words_are_split_as_nltk_splits_them():
    assert tokenize("The dog's bowl, two dogs' toys.") == ["the", "dog", "'s", "bowl", ",", "two", "dogs", "'",
                                                          "toys", "."]
    # a hyphen or slash keeps one word, which is no object; markdown stars are split off
    assert object_mentions("A hot-dog stand, a dog/cat toy and a **Dog**.") == ["dog"]


def test_two_word_names():
    # each pair is one object: no dog in a hot dog, no bear in a teddy bear, no phone in a cell phone
    assert object_mentions("A hot dog, two teddy bears, a cell phone, traffic lights, wine glasses.") == \
        ["hot dog", "teddy bear", "cell phone", "traffic light", "wine glass"]
    assert object_mentions("A bow tie and a motor cycle.") == ["tie", "motorcycle"]
    # a train track and a motor bike are no object at all (" motor bike" has a stray space in the list)
    assert object_mentions("A train track, a motor bike.") == []
    # pairs are taken left to right, each word once: "baby teddy" is no pair, so the baby is a person
    assert object_mentions("A baby teddy bear.") == ["person", "teddy bear"]
    assert object_mentions("A passenger train track.") == ["train"]


def test_a_toilet_seat_is_no_chair():
    assert object_mentions("A toilet seat.") == ["toilet"]
    # once the answer says toilet, no seat counts as a chair, wherever it is
    assert object_mentions("The seat of the toilet, and a seat by the sink.") == ["toilet", "sink"]
    assert object_mentions("A seat by the sink.") == ["chair", "sink"]


def test_baby_and_adult_animals_are_animals():
    assert object_mentions("A baby elephant and adult dogs.") == ["elephant", "dog"]
    assert object_mentions("A baby.") == ["person"]
    assert object_mentions("A baby animal.") == []  # "animal" is no COCO category


def test_passenger_jet_and_train_are_vehicles():
    assert object_mentions("A passenger jet, passenger trains.") == ["airplane", "train"]
    # only jet and train: a passenger plane is a person and a plane
    assert object_mentions("A passenger plane.") == ["person", "airplane"]


def test_words_as_read():
    assert object_words("Two puppies near a sofa.") == [("puppy", "dog"), ("sofa", "couch")]


def test_ground_truth_names():
    assert [to_category(n) for n in ["dog", "bus", "buses", "Motor Bike", "tables", "toilet seat", "tv"]] == \
        ["dog", "bus", "bus", "motorcycle", "dining table", "toilet", "tv"]
    for bad in ["unicorn", "dog and cat", ""]:
        with pytest.raises(ValueError, match="is not one of the 80 COCO objects"):
            to_category(bad)


def test_chair_by_hand():
    answers = [
        "A dog chases a dog and a cat.",                                      # dog dog cat*
        "A policeman waves at a taxi while a cop checks the monitor.",        # person car person tv*
        "A bag, a bat and a parking meter.",                                  # parking meter
        "Two women and their children watch the geese; mice run past the knives.",  # person person bird mouse* knife*
        "A hot dog and a teddy bear beside a cell phone.",                    # hot dog, teddy bear, cell phone*
        "The toilet seat is up and a seat leans on the toilet.",              # toilet toilet
        "A baby elephant follows an adult elephant.",                         # elephant elephant
        "A passenger jet flies over a passenger train.",                      # airplane train*
        "A bus passes two buses.",                                            # bus (only the plural counts)
        "A sunny day.",                                                       # nothing
    ]
    truths = [["dog"], ["person", "car"], ["parking meter"], ["person", "bird"], ["hot dog", "teddy bear"],
              ["toilet"], ["elephant", "person"], ["airplane"], ["bus"], ["boat"]]
    assert chair_answer(answers[3], truths[3]) == {"objects": ["person", "person", "bird", "mouse", "knife"],
                                                   "hallucinated": ["mouse", "knife"], "truth": ["bird", "person"]}
    m = chair(answers, truths)
    # answers with a hallucination (*): 1, 2, 4, 5, 8 -> 5 of 10
    assert m["chair_s"] == pytest.approx(5 / 10)
    # mentions 3+4+1+5+3+2+2+2+1+0 = 23, hallucinated 1+1+0+2+1+0+0+1+0+0 = 6
    assert (m["mentions"], m["hallucinated"]) == (23, 6)
    assert m["chair_i"] == pytest.approx(6 / 23)
    # true objects 1+2+1+2+2+1+2+1+1+1 = 14, mentioned 1+2+1+2+2+1+1+1+1+0 = 12 (no person in 7, no boat in 10)
    assert m["coverage"] == pytest.approx(12 / 14)
    assert m["answers"] == 10


def test_chair_of_nothing_is_zero():
    # the reference divides by zero here; we report 0
    assert chair(["A sunny day."], [[]]) == {"chair_s": 0.0, "chair_i": 0.0, "coverage": 0.0, "mentions": 0,
                                             "hallucinated": 0, "answers": 1}


# ---- OPERA's variant: nltk's tags and WordNet's lemmas ------------------------------------------

# What nltk 3.8.1 (OPERA's pin), its tagger and WordNet 3.0 give these words (checked by hand with
# them); a stand-in made of them tests the variant's logic where nltk's data cannot be had.
NLTK_TAGS = {"is": "VBZ", "skiing": "VBG", "seated": "VBN", "watch": "VBP", "men": "NNS", "women": "NNS",
             "buses": "NNS", "doggies": "NNS", "glasses": "NNS", "a": "DT", "two": "CD", "past": "IN", "on": "IN"}
WORDNET_LEMMAS = {("is", "v"): "be", ("skiing", "v"): "ski", ("seated", "v"): "seat", ("buses", "n"): "bus",
                  ("doggies", "n"): "doggy", ("glasses", "n"): "glass", ("women", "n"): "woman"}
# not there, so kept as they are: "bus" and "men" (WordNet knows both as nouns), "man", "bench", ...


@pytest.fixture
def nltk_stand_in(monkeypatch):
    """A module named nltk with the two calls OPERA's chair.py makes: pos_tag and WordNetLemmatizer."""
    class Lemmatizer:
        def lemmatize(self, word, pos="n"):
            return WORDNET_LEMMAS.get((word, pos), word)
    nltk = types.ModuleType("nltk")
    nltk.pos_tag = lambda words: [(w, NLTK_TAGS.get(w, "NN")) for w in words]
    nltk.stem = types.SimpleNamespace(WordNetLemmatizer=Lemmatizer)
    monkeypatch.setitem(sys.modules, "nltk", nltk)
    return nltk


def test_the_opera_variant_reads_words_by_their_part_of_speech(nltk_stand_in):
    text = "A man is skiing past a bus while two men watch."
    # the reference: "skiing" stays, "bus" becomes "bu" (nothing), "men" a man (a person)
    assert object_mentions(text) == ["person", "person"]
    # OPERA: skiing (a verb) -> ski, the skis; the bus is a bus; "men" stays "men", no person
    assert object_words(text, "opera") == [("man", "person"), ("ski", "skis"), ("bus", "bus")]
    assert object_mentions("Two doggies; glasses; women seated on buses.", "opera") == \
        ["dog", "person", "chair", "bus"]  # doggy, (a glass: nothing), woman, seat, bus
    assert object_mentions("Two doggies; glasses; women seated on buses.") == ["person", "bus"]
    with pytest.raises(ValueError, match="variant must be one of"):
        object_mentions(text, "halbench")


def test_chair_by_hand_under_both_variants(nltk_stand_in):
    answers = ["A man is skiing past a bus while two men watch.", "A woman is seated on a bench."]
    rows = [{"objects": ["person"]},
            {"objects": ["bench"], "captions": ["A woman seated on a bench."]}]
    # the captions are read by the same variant: under OPERA, "seated" makes the chair a true object
    assert true_objects(rows[1]) == ["bench", "person", "bench"]
    assert true_objects(rows[1], "opera") == ["bench", "person", "chair", "bench"]
    ref = chair(answers, [true_objects(r) for r in rows])
    # reference: person person | person bench -> 4 mentions, none hallucinated
    assert (ref["mentions"], ref["hallucinated"], ref["chair_s"], ref["chair_i"]) == (4, 0, 0.0, 0.0)
    assert ref["coverage"] == pytest.approx(3 / 3)  # person | person, bench
    opera = chair(answers, [true_objects(r, "opera") for r in rows], "opera")
    # OPERA: person skis* bus* | person chair bench -> 6 mentions, 2 hallucinated, in answer 1 only
    assert (opera["mentions"], opera["hallucinated"]) == (6, 2)
    assert opera["chair_i"] == pytest.approx(2 / 6) and opera["chair_s"] == pytest.approx(1 / 2)
    assert opera["coverage"] == pytest.approx(4 / 4)  # person | person, chair, bench


def test_what_the_opera_variant_needs_is_said_in_one_line(nltk_stand_in, monkeypatch):
    assert opera_unavailable() is None
    # nltk's LookupError names the package to download, as nltk 3.10 words it
    def lookup(name):
        def fail(*args, **kwargs):
            raise LookupError(f"\n****\n  Resource '{name}' not found.\n  Please use the NLTK Downloader to obtain "
                              f"the resource:\n\n  >>> import nltk\n  >>> nltk.download('{name}')\n")
        return fail
    monkeypatch.setattr(nltk_stand_in, "pos_tag", lookup("averaged_perceptron_tagger_eng"))
    monkeypatch.setattr(nltk_stand_in.stem, "WordNetLemmatizer",
                        lambda: types.SimpleNamespace(lemmatize=lookup("wordnet")))
    assert opera_unavailable() == ("--chair-variant opera needs nltk's data, not found here: "
                                   "python -m nltk.downloader averaged_perceptron_tagger_eng wordnet")
    monkeypatch.setitem(sys.modules, "nltk", None)  # not installed: import nltk fails
    assert opera_unavailable() == ("--chair-variant opera needs nltk, which is not installed: pip install nltk && "
                                   "python -m nltk.downloader averaged_perceptron_tagger_eng wordnet")


POPE_ANSWERS = ["Yes, there is a dog.", "No.", "There is not a dog. A cat.", "There is a cat on the bed.",
                "I see no dog", "NO!"]
POPE_LABELS = ["yes", "no", "no", "no", "yes", "no"]


def test_pope_standard_parser():
    # first sentence, commas dropped, split on spaces: "no" if No / not / no is a word, else "yes"
    assert [parse_yes_no(a) for a in POPE_ANSWERS] == ["yes", "no", "no", "yes", "no", "yes"]
    # "NO!" is the word "NO!", neither No nor no; "Not" is no "not"; only the first sentence counts
    assert [parse_yes_no(a) for a in ["Not really.", "Yes. There is no cat.", "No dog here"]] == ["yes", "yes", "no"]
    m = pope(POPE_ANSWERS, POPE_LABELS)
    # TP: 1; TN: 2, 3; FP: 4, 6; FN: 5
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # 0.4
    assert m["yes_ratio"] == pytest.approx(3 / 6)
    assert m["unparsed"] == 0 and m["answers"] == 6


def test_pope_strict_parser():
    # only a leading yes / no (any case) is read; the rest is unparsed and wrong
    assert [parse_yes_no(a, "strict") for a in POPE_ANSWERS] == ["yes", "no", None, None, None, "no"]
    m = pope(POPE_ANSWERS, POPE_LABELS, parse="strict")
    # TP: 1; FP: none; FN: 5 (unparsed, label yes); correct: 1, 2, 6
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(1 / 6)
    assert m["unparsed"] == 3
    with pytest.raises(ValueError, match="parse must be one of"):
        pope(POPE_ANSWERS, POPE_LABELS, parse="loose")


def test_pope_labels_must_be_yes_or_no():
    """A label such as "Yes" would silently count every answer wrong."""
    with pytest.raises(ValueError, match="POPE labels must be 'yes' or 'no', got 'Yes'"):
        pope(["yes"], ["Yes"])


# ---- short answers with a closed set of options ------------------------------------------------

def test_read_option_reads_the_option_named_first_as_a_whole_word():
    colors = ["red", "green", "blue", "yellow"]
    assert read_option("The circle is red.", colors) == "red"
    assert read_option("The circle is red, not blue.", ["red", "blue"]) == "red"  # the first named, not the last
    assert read_option("Not blue: RED!", ["red", "blue"]) == "blue"  # no sense of negation; any case
    assert read_option("It is dark red", ["red", "dark red"]) == "dark red"  # starts first
    assert read_option("dark red", ["dark", "dark red"]) == "dark red"  # both start there: the longer
    assert read_option("It is dark\n red", ["red", "dark red"]) == "dark red"  # any spacing between words
    assert read_option("It is dark-red", ["red", "dark red"]) == "red"  # a hyphen is no space; red is a word there
    assert read_option("reddish", colors) is None  # whole words only
    assert read_option("A bluegreen circle.", colors) is None
    assert read_option("I cannot tell.", colors) is None
    assert read_option("Red's the one.", colors) == "red"
    assert read_option("The Circle Is Red.", ["Red", "Blue"]) == "Red"  # the option as written
    # no options: the answer (and the prior) are what a row is read against
    assert read_option("Blue.", ["blue"]) == "blue"
    assert read_option("Light blue.", ["light blue", "blue"]) == "light blue"
    assert read_option("The circle is red.", ["blue", "red"]) == "red"
    with pytest.raises(ValueError, match="a blank option"):
        read_option("Red.", ["red", " "])
