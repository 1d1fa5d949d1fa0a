"""An objective from outside the package: one loss written here with torch alone, one entry in
``OBJECTIVES``, and ``train.py --objective NAME`` trains with it (README, "Adding your own
objective"). The example is IPO."""
import json
import os

import pytest

import train
from conftest import metrics
from mmpo.cli import UserError
from mmpo.training.config import parse_args, resolve, typed_flags
from mmpo.recipes import OBJECTIVES, Objective


def ipo(policy, ref, *, beta=0.1):
    """IPO (Azar et al. 2023, https://arxiv.org/abs/2310.12036): regress the log-ratio margin
    onto 1/(2 tau) instead of pushing it ever higher as DPO's log-sigmoid does, so the policy
    stays near the reference even on deterministic preferences. tau is ``beta`` (as in TRL):

        L = (h_resp - 1/(2*beta))^2,   h_resp = logratio(chosen) - logratio(rejected)

    Args:
        policy, ref: summed log-probs of views ``chosen`` and ``rejected``, each ``(batch,)``.
        beta: the regularization tau.
    Returns:
        loss ``(batch,)``, and no metrics of its own (a run adds rewards/* and logps/*).
    """
    # the reference is a constant of the objective: no gradient may flow into it
    logratio = {v: policy[v] - ref[v].detach() for v in ("chosen", "rejected")}  # each (batch,)
    h_resp = logratio["chosen"] - logratio["rejected"]  # (batch,)
    return (h_resp - 1 / (2 * beta)) ** 2, {}


@pytest.fixture
def with_ipo(monkeypatch):
    """IPO registered for one test (monkeypatch takes it out again)."""
    monkeypatch.setitem(OBJECTIVES, "ipo", Objective(ipo, ("chosen", "rejected"), lambda cfg, d: {"beta": cfg.beta},
                                                     lr=5e-7))


def configured(argv):
    return resolve(parse_args(argv), typed_flags(argv))


def test_a_registered_objective_trains_through_train_py(with_ipo, easy_data, tmp_path):
    beta = 0.25  # IPO pulls every margin towards 1 / (2 beta) = 2
    assert train.run(["--objective", "ipo", "--beta", str(beta), "--data", easy_data, "--out", str(tmp_path),
                      "--max-steps", "6", "--batch-size", "1", "--save-every", "0", "--lora-rank", "8",
                      "--lora-alpha", "16", "--lora-dropout", "0"]) == 0
    rows = metrics(tmp_path)
    assert len(rows) == 6
    for r in rows:  # one example a step: the logged loss is IPO's on the logged rewards, exactly
        h_resp = (r["rewards/chosen"] - r["rewards/rejected"]) / beta
        assert r["loss"] == pytest.approx((h_resp - 1 / (2 * beta)) ** 2, rel=1e-4)
        assert r["rewards/margins"] == pytest.approx(beta * h_resp, rel=1e-4, abs=1e-6)
        assert r["logps/chosen"] < 0 and r["logps/rejected"] < 0
    assert rows[0]["loss"] == pytest.approx(4.0)  # policy == reference at step 1: every margin is 0
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["rewards/accuracies"] == 1.0
    cfg = json.load(open(tmp_path / "config.json"))
    assert (cfg["objective"], cfg["lr"], cfg["weight_decay"], cfg["m_prime"]) == ("ipo", 1e-3, 0.0, "crop")


def test_a_registered_objective_takes_its_own_defaults(with_ipo):
    cfg = configured(["--objective", "ipo", "--model", "some/hub-model"])
    assert (cfg.lr, cfg.weight_decay, cfg.m_prime) == (5e-7, 0.0, "crop")  # the entry's: not a tiny model
    with pytest.raises(UserError, match="--recipe paper: --objective ipo has no released configuration"):
        configured(["--objective", "ipo", "--recipe", "paper"])


def test_an_unknown_objective_is_one_line_and_writes_nothing(easy_data, tmp_path, capsys):
    out = tmp_path / "o"
    assert train.run(["--objective", "ipo", "--data", easy_data, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: --objective ipo: unknown; choose one of dpo, mdpo, mfpo, napo, symmpo, sft"
    assert not os.path.exists(out)


def test_resolve_leaves_a_resumed_run_as_it_was_saved():
    """A resumed config is resolved already: --recipe paper is not applied over it again."""
    saved = configured(["--objective", "mdpo", "--recipe", "paper", "--epochs", "1"])
    assert (saved.lr, saved.epochs, saved.grad_accum) == (1e-5, 1, 8)
    saved.resume, saved.grad_accum = "runs/x", 2  # e.g. rescaled to another number of processes
    again = resolve(saved, set())
    assert (again.lr, again.epochs, again.grad_accum) == (1e-5, 1, 2)
