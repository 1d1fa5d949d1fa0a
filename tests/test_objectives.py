"""Each objective against numbers worked out by hand from the papers' formulas (each loss's
docstring cites its equations).

Log-ratios are chosen so every term is easy to evaluate: with beta = 0.1 a log-ratio of 10
gives a beta-scaled reward of 1. A loss returns only its own metrics; ``Objective.loss`` adds the
rewards/* and logps/* every objective shares (``objectives.shared_metrics``).
"""
import dataclasses
import inspect
import math

import pytest
import torch

from conftest import check_lift
from mmpo import objectives as O
from mmpo.training.config import Config
from mmpo.distributed import Dist
from mmpo.recipes import OBJECTIVES


def compute(name, policy, ref, lengths, **options):
    """What a run computes for objective ``name``: its loss and metrics, shared ones included."""
    return OBJECTIVES[name].loss(policy, ref, lengths, options)


def logsig(x):
    return -math.log1p(math.exp(-x))


def sig(x):
    return 1 / (1 + math.exp(-x))


def views(**logratios):
    """policy/ref dicts whose log-ratio per view is the given list; ref is non-zero on purpose."""
    policy, ref = {}, {}
    for name, values in logratios.items():
        r = torch.tensor([-5.0 - i for i in range(len(values))])
        ref[name] = r
        policy[name] = (r + torch.tensor(values, dtype=torch.float32)).requires_grad_()
    return policy, ref


def test_dpo_by_hand():
    policy, ref = views(chosen=[10.0, -5.0], rejected=[0.0, 5.0])
    loss, own = O.dpo(policy, ref, beta=0.1)
    # h_resp = [10, -10] -> beta*h_resp = [1, -1]
    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx([-logsig(1.0), -logsig(-1.0)], abs=1e-6)
    assert own == {}  # DPO has nothing of its own to log: Objective.loss adds the shared figures
    loss2, m = compute("dpo", policy, ref, {}, beta=0.1)
    assert torch.equal(loss2, loss)
    assert m["rewards/chosen"].item() == pytest.approx(0.1 * (10 - 5) / 2)
    assert m["rewards/rejected"].item() == pytest.approx(0.1 * (0 + 5) / 2)
    assert m["rewards/margins"].item() == pytest.approx(0.0, abs=1e-6)
    assert m["rewards/accuracies"].item() == 0.5
    assert m["logps/chosen"].item() == pytest.approx(((-5 + 10) + (-6 - 5)) / 2)
    assert m["logps/rejected"].item() == pytest.approx(((-5 + 0) + (-6 + 5)) / 2)


def test_the_shared_rewards_take_the_beta_of_the_loss():
    policy, ref = views(chosen=[10.0, 30.0], rejected=[0.0, 10.0])
    _, m = compute("dpo", policy, ref, {}, beta=0.5)
    assert m["rewards/chosen"].item() == pytest.approx(0.5 * 20)
    assert m["rewards/rejected"].item() == pytest.approx(0.5 * 5)
    assert m["rewards/margins"].item() == pytest.approx(0.5 * 15)
    _, default = compute("dpo", policy, ref, {})  # no beta given: the loss's default, 0.1
    assert default["rewards/chosen"].item() == pytest.approx(0.1 * 20)


def test_mdpo_by_hand_and_each_switch():
    policy, ref = views(chosen=[10.0], rejected=[-10.0], chosen_on_corrupt=[20.0])
    # beta*h_resp = 2, beta*h_image = -1, beta*logratio(chosen) = 1
    t_resp, t_img, t_anc = -logsig(2.0), -logsig(-1.0), -logsig(1.0 - 0.5)
    full, m = O.mdpo(policy, ref, beta=0.1, delta=0.5)
    assert full.item() == pytest.approx(t_resp + t_img + t_anc, abs=1e-6)
    assert O.mdpo(policy, ref, delta=0.5, conditional=False)[0].item() == pytest.approx(t_resp + t_anc, abs=1e-6)
    assert O.mdpo(policy, ref, delta=0.5, anchor=False)[0].item() == pytest.approx(t_resp + t_img, abs=1e-6)
    assert O.mdpo(policy, ref, delta=0.5, response=False)[0].item() == pytest.approx(t_img + t_anc, abs=1e-6)
    # Table 4 anchors push rewards below delta: beta*logratio(rejected) = -1, beta*logratio(corrupt) = 2
    extra = O.mdpo(policy, ref, delta=0.5, rejected_anchor=True, corrupt_anchor=True)[0].item()
    assert extra == pytest.approx(t_resp + t_img + t_anc - logsig(-(-1.0 - 0.5)) - logsig(-(2.0 - 0.5)), abs=1e-6)
    assert m["rewards/image_accuracies"].item() == 0.0  # h_image < 0
    assert m["rewards/image_margins"].item() == pytest.approx(-1.0)
    _, shared = compute("mdpo", policy, ref, {}, beta=0.1, delta=0.5)
    assert shared["rewards/accuracies"].item() == 1.0  # h_resp > 0
    assert shared["rewards/chosen_on_corrupt"].item() == pytest.approx(2.0)


def test_mfpo_weights_and_eta():
    policy, ref = views(chosen=[10.0], rejected=[0.0], chosen_on_corrupt=[-10.0])
    # beta*h_resp = 1, beta*h_image = 2, beta*logratio(chosen) = 1
    loss, m = O.mfpo(policy, ref, beta=0.1, eta=0.25, weights=(0.5, 2.0, 3.0))
    want = 0.5 * -logsig(1.0) + 2.0 * -logsig(2.0) + 3.0 * -logsig(1.0 - 0.25)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert m["mfpo/loss_image"].item() == pytest.approx(-logsig(2.0), abs=1e-6)
    only_text = O.mfpo(policy, ref, weights=(1.0, 0.0, 0.0))[0].item()
    assert only_text == pytest.approx(-logsig(1.0), abs=1e-6)


# ---- NaPO -------------------------------------------------------------------------------

def test_box_cox_loss_at_zero_by_hand():
    # at x = 0, sig(x) = 1/2: the term is (1 - 2^-q) / q, which is log 2 as q -> 0 (BCE) and 1/2
    # at q = 1 (MAE); its gradient -sig(x)^q (1 - sig(x)) is -2^-q / 2
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    for q, value in ((0.0, math.log(2)), (1e-5, math.log(2)), (0.5, 2 - math.sqrt(2)), (1.0, 0.5)):
        loss = O.box_cox_loss(x, q)
        (g,) = torch.autograd.grad(loss.sum(), x)
        assert loss.item() == pytest.approx(value, rel=1e-4), q
        assert g.item() == pytest.approx(-(2 ** -q) / 2, rel=1e-4), q


def test_box_cox_loss_limits():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0], dtype=torch.float64)
    dpo = -torch.nn.functional.logsigmoid(x)
    assert torch.allclose(O.box_cox_loss(x, 1e-3), dpo, rtol=2e-3, atol=0)  # q -> 0 is BCE, continuously
    assert torch.allclose(O.box_cox_loss(x, 1.0), 1 - torch.sigmoid(x))  # q = 1 is MAE
    q = 0.3  # the stable form -expm1(q logsig(x)) / q is the paper's (1 - sig(x)^q) / q
    assert torch.allclose(O.box_cox_loss(x, q), (1 - torch.sigmoid(x) ** q) / q)


def test_box_cox_loss_gradient_is_sigmoid_q_times_dpo():
    q = 0.4
    x = torch.linspace(-4, 4, 9, dtype=torch.float64, requires_grad=True)
    (g_napo,) = torch.autograd.grad(O.box_cox_loss(x, q).sum(), x)
    (g_dpo,) = torch.autograd.grad(-torch.nn.functional.logsigmoid(x).sum(), x)
    assert torch.allclose(g_napo, torch.sigmoid(x.detach()) ** q * g_dpo)


def test_box_cox_loss_extreme_margins_finite():
    x = torch.tensor([-1e4, 1e4], requires_grad=True)
    for q in (0.0, 1e-3, 0.5, 1.0):
        loss = O.box_cox_loss(x, q)
        (g,) = torch.autograd.grad(loss.sum(), x)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    assert O.box_cox_loss(x, 0.0)[0].item() == pytest.approx(1e4)  # BCE grows linearly
    assert O.box_cox_loss(x, 1.0)[0].item() == pytest.approx(1.0)  # MAE saturates at 1


def napo_views():
    policy, ref = views(chosen=[10.0, 30.0], rejected=[0.0, 10.0],
                        lang_biased=[-10.0, 10.0], vision_biased=[0.0, 0.0])
    lengths = {"chosen": torch.tensor([5.0, 10.0]), "rejected": torch.tensor([4.0, 4.0]),
               "lang_biased": torch.tensor([2.0, 4.0]), "vision_biased": torch.tensor([3.0, 3.0])}
    return policy, ref, lengths


def test_napo_fixed_q_equals_dpo_in_the_limit():
    policy, ref, lengths = napo_views()
    loss, _ = O.napo(policy, ref, lengths, q=0.0, weights=(1.0, 1.0, 1.0))
    dpo_sum = sum(O.dpo({"chosen": policy["chosen"], "rejected": policy[v]},
                        {"chosen": ref["chosen"], "rejected": ref[v]})[0]
                  for v in ("rejected", "lang_biased", "vision_biased"))
    assert torch.allclose(loss, dpo_sum)


def test_napo_dynamic_q_code_form_by_hand():
    policy, ref, lengths = napo_views()
    loss, m = O.napo(policy, ref, lengths, weights=(0.04, 0.48, 0.48))
    # language-biased margin, length-averaged: [10/5 - (-10)/2, 30/10 - 10/4] = [7, 0.5]
    q_l = min(1.0, max(0.001, 2 * (1 - sig(0.5 * (7 + 0.5) / 2))))
    # vision-biased margin, summed: [10, 30], mean 20
    q_v = min(1.0, max(0.001, 2 * (1 - sig(0.01 * 20))))
    assert m["napo/q_lang"].item() == pytest.approx(q_l, rel=1e-5)
    assert m["napo/q_vision"].item() == pytest.approx(q_v, rel=1e-5)
    # example 0: beta*h = 1, beta*h_lb = 2, beta*h_vb = 1
    want0 = 0.04 * -logsig(1.0) + 0.48 * (1 - sig(2.0) ** q_l) / q_l + 0.48 * (1 - sig(1.0) ** q_v) / q_v
    assert loss[0].item() == pytest.approx(want0, rel=1e-5)


def test_napo_dynamic_q_paper_form_by_hand():
    policy, ref, lengths = napo_views()
    _, m = O.napo(policy, ref, lengths, q_form="paper", beta=0.1)
    q_l = min(1.0, max(0.01, 1 - sig(0.5 * 0.1 * 3.75)))
    q_v = min(1.0, max(0.01, 1 - sig(0.01 * 0.1 * 20)))
    assert m["napo/q_lang"].item() == pytest.approx(q_l, rel=1e-5)
    assert m["napo/q_vision"].item() == pytest.approx(q_v, rel=1e-5)


def test_napo_dynamic_q_clips():
    big = torch.tensor([1e4])
    assert O.dynamic_q(big, alpha=0.5, form="code").item() == pytest.approx(0.001)
    assert O.dynamic_q(-big, alpha=0.5, form="code").item() == pytest.approx(1.0)
    assert O.dynamic_q(big, alpha=0.5, form="paper").item() == pytest.approx(0.01)
    with pytest.raises(ValueError, match="q_form"):
        O.dynamic_q(big, alpha=0.5, form="other")


def test_napo_dynamic_weights_eq13():
    policy, ref, lengths = napo_views()
    _, m = O.napo(policy, ref, lengths, weights="dynamic", q=0.5)
    # means of beta*h: dpo [1, 2] -> 1.5, lang [2, 2] -> 2, vision [1, 3] -> 2; sum 5.5
    assert m["napo/g_dpo"].item() == pytest.approx(1.5 / 5.5)
    assert m["napo/g_lang"].item() == pytest.approx(2 / 5.5)
    assert m["napo/g_vision"].item() == pytest.approx(2 / 5.5)
    # a negative mean margin is clipped to the floor 0.01
    policy2, ref2 = views(chosen=[0.0], rejected=[10.0], lang_biased=[-20.0], vision_biased=[-20.0])
    ones = {k: torch.ones(1) for k in policy2}
    _, m2 = O.napo(policy2, ref2, ones, weights="dynamic", q=0.5)
    assert m2["napo/g_dpo"].item() == pytest.approx(0.01)
    assert m2["napo/g_lang"].item() == pytest.approx(2 / 3)


# ---- SymMPO -----------------------------------------------------------------------------

def sym_views():
    return views(chosen=[10.0], rejected=[0.0], contrast_on_image=[-10.0],
                 chosen_on_corrupt=[5.0], contrast_on_corrupt=[25.0])


def test_symmpo_each_term_isolated():
    policy, ref = sym_views()
    # beta*h = 1; h1 = 20 -> 2; h2 = 20 -> 2; beta*logratio(chosen) = 1, beta*logratio(contrast_on_corrupt) = 2.5
    kw = dict(beta=0.1, delta=0.5)
    only_dpo = O.symmpo(policy, ref, lam=0, gamma=0, eta=0, **kw)[0].item()
    only_pair = O.symmpo(policy, ref, lam=1, gamma=0, eta=0, **kw)[0].item() - only_dpo
    only_anchor = O.symmpo(policy, ref, lam=0, gamma=0, eta=1, **kw)[0].item() - only_dpo
    assert only_dpo == pytest.approx(-logsig(1.0), abs=1e-6)
    assert only_pair == pytest.approx(-2 * logsig(2.0), abs=1e-6)
    assert only_anchor == pytest.approx(-logsig(0.5) - logsig(2.0), abs=1e-6)
    # equal margins h1 == h2: the margin term is zero whatever gamma
    assert O.symmpo(policy, ref, lam=0, gamma=5.0, eta=0, **kw)[0].item() == pytest.approx(only_dpo, abs=1e-6)


def test_symmpo_margin_term_code_and_paper_forms():
    policy, ref = views(chosen=[10.0], rejected=[0.0], contrast_on_image=[0.0],
                        chosen_on_corrupt=[0.0], contrast_on_corrupt=[4.0])
    # h1 = 10, h2 = 4 -> (h1 - h2)^2 = 36
    base = O.symmpo(policy, ref, lam=0, gamma=0, eta=0)[0].item()
    code = O.symmpo(policy, ref, lam=0, gamma=1e-2, eta=0)[0].item() - base
    paper = O.symmpo(policy, ref, lam=0, gamma=1e-2, eta=0, margin_form="paper", beta=0.1)[0].item() - base
    assert code == pytest.approx(1e-2 * 36, rel=1e-5)
    assert paper == pytest.approx(1e-2 * 36 * 0.01, rel=1e-4)
    full, m = O.symmpo(policy, ref)
    assert m["symmpo/margin_gap"].item() == pytest.approx(6.0)
    want = (-logsig(1.0) + 0.5 * (-logsig(1.0) - logsig(0.4)) + 1e-4 * 36
            + 1.0 * (-logsig(1.0) - logsig(0.4)))
    assert full.item() == pytest.approx(want, abs=1e-6)


def test_symmpo_paper_form_default_weight_is_the_released_term():
    """The paper scales the margins by beta, which squares into the term: beta^2 (h1 - h2)^2. Its
    default weight 1e-4 / beta^2 undoes that, so both forms add the released 1e-4 (h1 - h2)^2."""
    torch.manual_seed(0)
    names = ("chosen", "rejected", "contrast_on_image", "chosen_on_corrupt", "contrast_on_corrupt")
    policy = {v: torch.randn(6) * 20 for v in names}
    ref = {v: torch.randn(6) * 20 for v in names}
    lr = {v: policy[v] - ref[v] for v in names}
    h1 = lr["chosen"] - lr["contrast_on_image"]
    h2 = lr["contrast_on_corrupt"] - lr["chosen_on_corrupt"]
    base = O.symmpo(policy, ref, lam=0, gamma=0, eta=0, beta=0.1)[0]
    code = O.symmpo(policy, ref, lam=0, eta=0, beta=0.1)[0] - base
    paper = O.symmpo(policy, ref, lam=0, eta=0, beta=0.1, margin_form="paper")[0] - base
    # by hand: (1e-4 / 0.1^2) * (0.1*h1 - 0.1*h2)^2 = 1e-2 * 0.01 * (h1 - h2)^2 = 1e-4 * (h1 - h2)^2
    assert torch.allclose(code, 1e-4 * (h1 - h2) ** 2, rtol=1e-5)
    assert torch.allclose(paper, code, rtol=1e-4)
    # a weight typed by hand is used as it is: 1e-4 on the beta-scaled margins is 100x weaker
    weak = O.symmpo(policy, ref, lam=0, gamma=1e-4, eta=0, beta=0.1, margin_form="paper")[0] - base
    assert torch.allclose(weak, code / 100, rtol=1e-3)
    # at another beta the default still follows: 1e-4 / 0.5^2 = 4e-4 on (0.5*h1 - 0.5*h2)^2
    base5 = O.symmpo(policy, ref, lam=0, gamma=0, eta=0, beta=0.5)[0]
    paper5 = O.symmpo(policy, ref, lam=0, eta=0, beta=0.5, margin_form="paper")[0] - base5
    assert torch.allclose(paper5, 1e-4 * (h1 - h2) ** 2, rtol=1e-4)


# ---- every objective ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_gradients_reach_policy_never_ref(name):
    torch.manual_seed(0)
    views_ = OBJECTIVES[name].views
    policy = {v: torch.randn(3, requires_grad=True) for v in views_}
    ref = {v: torch.randn(3, requires_grad=True) for v in views_}
    lengths = {v: torch.full((3,), 4.0) for v in views_}
    loss, metrics = compute(name, policy, ref, lengths)
    assert loss.shape == (3,)
    loss.mean().backward()
    for v in views_:
        assert policy[v].grad is not None and policy[v].grad.abs().sum() > 0, v
    for v in views_:
        assert ref[v].grad is None, v
    assert all(not t.requires_grad for t in metrics.values())  # metrics are detached
    if OBJECTIVES[name].reference:  # a preference objective
        assert "rewards/accuracies" in metrics and "rewards/chosen" in metrics


def test_sft_is_the_token_mean_cross_entropy():
    # two answers of 2 and 6 tokens with summed log-probs -1 and -3: the loss of the batch is
    # the per-token one, (1 + 3) / (2 + 6) = 0.5, not the mean of per-answer means (0.5 + 0.5) / 2
    policy = {"chosen": torch.tensor([-1.0, -3.0], requires_grad=True)}
    loss, metrics = compute("sft", policy, {}, {"chosen": torch.tensor([2.0, 6.0])})
    assert loss.mean().item() == pytest.approx(0.5)
    loss.mean().backward()
    assert policy["chosen"].grad.tolist() == pytest.approx([-1 / 8, -1 / 8])  # every token weighs the same
    assert metrics["logps/chosen"].item() == pytest.approx(-2.0)


# ---- each loss lifted alone: its source, run with exactly the names its docstring lists ---------

@pytest.mark.parametrize("name", ["dpo", "mdpo", "mfpo", "napo", "symmpo", "sft"])
def test_each_loss_copied_alone_runs_with_exactly_the_names_it_lists(name):
    torch.manual_seed(0)
    views_ = OBJECTIVES[name].views
    policy = {v: torch.randn(4) * 5 for v in views_}
    ref = {v: torch.randn(4) * 5 for v in views_}
    lengths = {v: torch.tensor([3.0, 5.0, 8.0, 2.0]) for v in views_}
    args = (policy, ref, lengths) if OBJECTIVES[name].needs_lengths else (policy, ref)
    options = [{}] + ([{"weights": "dynamic"}, {"q": 0.3}, {"q_form": "paper"}] if name == "napo" else [])

    def exercise(fn):
        out = []
        for extra in options:
            loss, m = fn(*args, **extra)
            out += [loss] + [m[k] for k in sorted(m)]
        return out
    check_lift(OBJECTIVES[name].fn, exercise)


def test_napo_takes_its_cross_rank_mean_from_the_caller():
    """q comes from the batch-mean margin over *every* rank: the caller passes that mean in (a run
    passes ``distributed.global_mean``), so the loss itself holds no collective."""
    policy, ref = views(chosen=[10.0, 0.0], rejected=[0.0, 0.0], lang_biased=[0.0, 0.0], vision_biased=[0.0, -30.0])
    lengths = {v: torch.ones(2) for v in policy}
    seen = []
    other_ranks = lambda x: (seen.append(x) or (x.mean() + 4.0) / 2)  # another rank whose mean is 4
    _, m = O.napo(policy, ref, lengths, batch_mean=other_ranks)
    # vision: h_vb = [10, 30], local mean 20, global (20 + 4) / 2 = 12: q = 2 (1 - sig(0.01 * 12))
    assert m["napo/q_vision"].item() == pytest.approx(2 * (1 - sig(0.01 * 12)), rel=1e-6)
    assert len(seen) == 2 and not any(x.requires_grad for x in seen)
    assert O.napo(policy, ref, lengths)[1]["napo/q_vision"].item() == pytest.approx(2 * (1 - sig(0.01 * 20)), rel=1e-6)
    assert OBJECTIVES["napo"].options(Config(), Dist())["batch_mean"](torch.tensor([1.0, 3.0])).item() == 2.0


def test_the_objectives_file_imports_only_torch():
    import ast
    tree = ast.parse(inspect.getsource(O))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"torch", "torch.nn.functional"}


def test_the_registry_holds_each_papers_defaults():
    objectives = OBJECTIVES.items()
    assert {n: o.lr for n, o in objectives} == {"dpo": 1e-5, "mdpo": 1e-5, "mfpo": 1e-5, "napo": 5e-7,
                                                "symmpo": 5e-6, "sft": 2e-5}
    assert {n for n, o in objectives if o.weight_decay} == {"napo", "symmpo"}
    assert {n: o.weight_decay for n, o in objectives}["napo"] == 0.01
    assert {n: o.m_prime for n, o in objectives} == {"dpo": "crop", "mdpo": "crop", "mfpo": "noise", "napo": "crop",
                                                     "symmpo": "contrast", "sft": "crop"}
    fields = {f.name for f in dataclasses.fields(Config)}
    for name, o in objectives:
        source, values = o.recipe
        assert set(values) <= fields, name  # a misspelt name would be set on the Config and never read
        assert values["lr"] == o.lr, name


@pytest.mark.parametrize("name", ["dpo", "mdpo", "mfpo", "napo", "symmpo", "sft"])
def test_the_default_flags_give_each_loss_its_own_defaults(name):
    """The flags' defaults are the papers' (Config), the losses' keyword defaults too: ``options``
    must map one onto the other (a flag sent to the wrong argument shows here)."""
    fn = OBJECTIVES[name].fn
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.kind == p.KEYWORD_ONLY}
    options = OBJECTIVES[name].options(Config(), Dist())
    options.pop("batch_mean", None)  # the caller's cross-rank mean, not a hyperparameter
    defaults.pop("batch_mean", None)
    assert options == defaults
