"""Hallucination metrics on generated answers: CHAIR (Rohrbach et al. 2018) and POPE (Li et al. 2023).

CHAIR finds the objects an answer mentions with the 80 COCO categories, their synonyms and
plural forms (``coco_objects.json``, longest phrase first, so "hot dog" is not a dog), and
compares them with the objects truly in the image:
    CHAIR_s  = answers with at least one hallucinated object / answers
    CHAIR_i  = hallucinated objects / mentioned objects        (each object once per answer)
    coverage = mentioned true objects / true objects
POPE asks yes/no questions about objects; answers are parsed from free text.
"""
import json
import os
import re

with open(os.path.join(os.path.dirname(__file__), "coco_objects.json")) as f:
    SYNONYMS: dict[str, list[str]] = json.load(f)

IRREGULAR = {"men", "women", "children", "people", "mice", "knives", "geese", "oxen", "calves", "ponies",
             "puppies", "babies", "ladies", "gentlemen", "skis", "scissors", "sheep", "cattle", "buses", "busses",
             "benches", "tvs"}


def _plural(word: str) -> str:
    if word.endswith("ss"):
        return word + "es"
    if word in IRREGULAR or word.endswith("s"):
        return word
    if word.endswith(("ch", "sh", "x")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _phrases() -> dict[tuple[str, ...], str]:
    """(words of a name, singular or plural) -> COCO category."""
    table = {}
    for category, names in SYNONYMS.items():
        for name in names + [category]:
            parts = name.split()
            for form in (parts, parts[:-1] + [_plural(parts[-1])]):
                table.setdefault(tuple(form), category)
    return table


PHRASES = _phrases()
LONGEST = max(len(p) for p in PHRASES)


def mentioned_objects(text: str) -> set[str]:
    """COCO categories mentioned in ``text`` (longest phrase first; each category once)."""
    tokens = re.findall(r"[a-z]+", text.lower())
    found, i = set(), 0
    while i < len(tokens):
        for n in range(min(LONGEST, len(tokens) - i), 0, -1):
            category = PHRASES.get(tuple(tokens[i:i + n]))
            if category:
                found.add(category)
                i += n
                break
        else:
            i += 1
    return found


def to_category(name: str) -> str:
    """A ground-truth object name (category, synonym or plural) -> its COCO category."""
    found = mentioned_objects(name)
    if len(found) != 1:
        raise ValueError(f"{name!r} is not one of the 80 COCO objects or their synonyms")
    return found.pop()


def chair(answers: list[str], truths: list[list[str]]) -> dict:
    """CHAIR_s, CHAIR_i and coverage of answers against each image's true objects."""
    n_hall_answers = n_mentioned = n_hall = n_truth = n_covered = 0
    for text, truth in zip(answers, truths):
        gt = {to_category(t) for t in truth}
        said = mentioned_objects(text)
        hallucinated = said - gt
        n_hall_answers += bool(hallucinated)
        n_mentioned += len(said)
        n_hall += len(hallucinated)
        n_truth += len(gt)
        n_covered += len(said & gt)
    return {"chair_s": n_hall_answers / max(1, len(answers)), "chair_i": n_hall / max(1, n_mentioned),
            "coverage": n_covered / max(1, n_truth), "answers": len(answers)}


def parse_yes_no(text: str) -> str | None:
    """'yes' / 'no' from a free-form answer ("Yes, there is a dog.", "No."); None otherwise."""
    m = re.match(r"\W*(yes|no)\b", text.lower())
    return m.group(1) if m else None


def pope(answers: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1 (positive = yes) and yes-ratio; unparsed answers count
    as wrong and are reported."""
    parsed = [parse_yes_no(a) for a in answers]
    tp = sum(p == "yes" and y == "yes" for p, y in zip(parsed, labels))
    fp = sum(p == "yes" and y == "no" for p, y in zip(parsed, labels))
    fn = sum(p != "yes" and y == "yes" for p, y in zip(parsed, labels))
    correct = sum(p == y for p, y in zip(parsed, labels))
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    return {"accuracy": correct / max(1, len(labels)), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(1e-12, precision + recall),
            "yes_ratio": parsed.count("yes") / max(1, len(labels)), "unparsed": parsed.count(None),
            "answers": len(labels)}
