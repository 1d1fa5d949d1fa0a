"""The evaluation's metrics as pure functions of log-probs, answers and labels (no model, no I/O,
no torch): preference and image reliance from summed log-probs; POPE (Li et al. 2023,
https://arxiv.org/abs/2305.10355) and short answers on generated answers, by the rules of the
reference code that papers run (CHAIR: mmpo/common/chair.py; AMBER: amber.py). Where a reference divides by
zero (no "yes") we report 0.

POPE asks yes/no questions about objects. ``parse="standard"`` reads answers as POPE's own
``evaluate.py`` (github.com/RUCAIBox/POPE) and LLaVA's ``llava/eval/eval_pope.py`` do: keep the
text before the first ".", drop commas, split on spaces; the answer is "no" if "No", "not" or
"no" is one of those words, otherwise "yes" (so "NO!" reads as yes, as there).
``parse="strict"`` accepts only an answer that starts with yes or no, and counts anything else
as unparsed and wrong.
"""
import json
import re

from mmpo.common.chair import to_category

# ---- preference and image reliance, from summed log-probs {view: (n,) tensor} ------------------

def preference_metrics(logps: dict, ref: dict, negatives: list[str], beta: float) -> dict:
    """Chosen against each negative: log-prob accuracy, and implicit-reward accuracy and margin
    beta * h against the reference ``ref`` (the base model; 0 for the base model itself)."""
    out = {}
    for v in negatives:
        out[f"pref/{v}/logp_acc"] = (logps["chosen"] > logps[v]).float().mean().item()
        h = (logps["chosen"] - ref["chosen"]) - (logps[v] - ref[v])
        out[f"pref/{v}/reward_acc"] = (h > 0).float().mean().item()
        out[f"pref/{v}/reward_margin"] = (beta * h).mean().item()
    return out


def reliance_metrics(kind: str, lp: dict) -> dict:
    """How much the chosen answer depends on the image: on m against m' (``kind``: crop, noise,
    blank); for a blank m', also chosen-over-rejected with the real image (sighted) and without."""
    gap = lp["chosen"] - lp["chosen_on_corrupt"]
    out = {f"reliance/{kind}/cond_acc": (gap > 0).float().mean().item(), f"reliance/{kind}/logp_gap": gap.mean().item()}
    if kind == "blank":
        sighted = (lp["chosen"] > lp["rejected"]).float().mean().item()
        blind = (lp["chosen_on_corrupt"] > lp["rejected_on_corrupt"]).float().mean().item()
        out.update({"reliance/sighted_acc": sighted, "reliance/blind_acc": blind,
                    "reliance/sighted_minus_blind": sighted - blind})
    return out


# ---- POPE ---------------------------------------------------------------------------------------

POPE_PARSERS = ("standard", "strict")


def parse_yes_no(text: str, parse: str = "standard") -> str | None:
    """'yes' / 'no' read from a free-form answer; None only under ``parse="strict"``."""
    if parse == "standard":
        words = text.split(".")[0].replace(",", "").split(" ")  # the first sentence, as the reference
        return "no" if {"No", "not", "no"}.intersection(words) else "yes"
    if parse == "strict":
        m = re.match(r"\W*(yes|no)\b", text.lower())
        return m.group(1) if m else None
    raise ValueError(f"parse must be one of {POPE_PARSERS}, not {parse!r}")


def pope(answers: list[str], labels: list[str], parse: str = "standard") -> dict:
    """Accuracy, precision, recall, F1 (positive = yes) and yes-ratio of ``answers`` against
    ``labels`` ('yes'/'no'). Unparsed answers (strict parser only) are wrong and reported."""
    bad = sorted({str(y) for y in labels} - {"yes", "no"})
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {', '.join(map(repr, bad[:3]))}")
    parsed = [parse_yes_no(a, parse) for a in answers]
    pairs = list(zip(parsed, labels, strict=True))
    tp = sum(p == "yes" and y == "yes" for p, y in pairs)
    fp = sum(p == "yes" and y == "no" for p, y in pairs)
    fn = sum(p != "yes" and y == "yes" for p, y in pairs)
    correct = sum(p == y for p, y in pairs)
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    return {"accuracy": correct / max(1, len(labels)), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(1e-12, precision + recall),
            "yes_ratio": parsed.count("yes") / max(1, len(labels)), "unparsed": parsed.count(None),
            "answers": len(labels)}


# ---- short answers with a closed set of options ------------------------------------------------

def read_option(text: str, options: list[str]) -> str | None:
    """The option (as written in ``options``) that a short answer gives, or None when it names
    none. Each option is looked for in the lower-cased answer as a whole word or phrase, its words
    separated by any spacing ("reddish" is no "red", "dark  red" is "dark red"); the one found
    first wins ("The circle is red, not blue." -> red), and of two found at the same place, the
    longer ("dark red" over "dark"). Options are not blank and differ in more than case and spacing."""
    lowered, found = text.lower(), []
    for option in options:
        words = option.lower().split()
        if not words:
            raise ValueError(f"a blank option: {option!r}")
        m = re.search(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", lowered)
        if m:
            found.append((m.start(), -len(" ".join(words)), option))
    return min(found, key=lambda f: f[:2])[2] if found else None


def qa_choices(row: dict) -> list[str]:
    """What a QA answer is read against: the row's options, else its answer and its prior."""
    if row.get("options") is not None:
        return row["options"]
    return list(dict.fromkeys(x for x in (row["answer"], row.get("prior")) if x is not None))


def qa_metrics(rows: list[dict], reads: list[str | None]) -> dict:
    """Accuracy (read == answer) and the share of answers naming no option; over the rows whose
    prior is not their answer, how many there are and how often the prior was read."""
    n = len(rows)
    m = {"examples": n, "accuracy": sum(x == r["answer"] for r, x in zip(rows, reads)) / max(1, n),
         "unread": reads.count(None) / max(1, n)}
    tempted = [x == r["prior"] for r, x in zip(rows, reads) if r.get("prior") not in (None, r["answer"])]
    if tempted:
        m["prior_examples"], m["prior_rate"] = len(tempted), sum(tempted) / len(tempted)
    return m


# ---- the labels of each benchmark's rows --------------------------------------------------------

def label_problems(kind: str, row: dict) -> list[str]:
    """What is wrong with the labels of a benchmark row (``kind``: chair, pope or qa), each as
    "field 'x': what": CHAIR's objects (names ``to_category`` reads) and captions, POPE's yes/no
    answer, QA's answer, options, group and prior (null is absent)."""
    problems = []
    if kind == "chair":
        objs, captions = row.get("objects"), row.get("captions", [])
        if not isinstance(objs, list) or not all(isinstance(o, str) for o in objs):
            problems.append("field 'objects': must be a list of object names")
            objs = []
        for o in objs:
            try:
                to_category(o)
            except ValueError as e:
                problems.append(f"field 'objects': {e}")
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            problems.append("field 'captions': must be a list of captions")
    elif kind == "pope" and row.get("answer") not in ("yes", "no"):
        problems.append("field 'answer': must be \"yes\" or \"no\"")
    elif kind == "qa":
        problems += _qa_problems(row)
    return problems


def _qa_problems(row: dict) -> list[str]:
    def text(v) -> bool:
        return isinstance(v, str) and bool(v.strip())
    problems = []
    answer, options, group, prior = (row.get(k) for k in ("answer", "options", "group", "prior"))
    if answer is None:
        problems.append("field 'answer': missing")
    elif not text(answer):
        problems.append("field 'answer': must be a non-empty string")
    if options is not None:
        if not isinstance(options, list) or not all(text(o) for o in options):
            problems.append("field 'options': must be a list of non-empty strings")
            options = None
        else:
            seen = {}  # options are read whatever their case and spacing (read_option): "Red" is "red"
            for o in options:
                key = " ".join(o.lower().split())
                if key in seen:
                    shown = [json.dumps(x, ensure_ascii=False) for x in (seen[key], o)]
                    problems.append(f"field 'options': {shown[0]} twice" if seen[key] == o else
                                    f"field 'options': {shown[0]} and {shown[1]} read alike")
                seen.setdefault(key, o)
            if text(answer) and answer not in options:
                problems.append(f"field 'options': must contain the answer {json.dumps(answer, ensure_ascii=False)}")
    if group is not None and not text(group):
        problems.append("field 'group': must be a non-empty string")
    if prior is not None:
        if not text(prior):
            problems.append("field 'prior': must be a non-empty string")
        elif options is not None and prior not in options:
            problems.append(f"field 'prior': {json.dumps(prior, ensure_ascii=False)} is not one of the options")
    return problems
