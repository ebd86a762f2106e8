"""Reference task (b) on a small element set: element choice, tolerance factor and the
perovskite benchmark with its TPE baseline from the command line."""
import json

import numpy as np
import pytest
import torch

from hpcxtal.refine.elements import (ElementChoice, SiteChoice, design, ionic_states,
                                     tolerance_factor, window_penalty)

ABX3 = [SiteChoice(("K", "Sr", "La"), 1, "XII"), SiteChoice(("Ti", "Nb", "Al"), 1, "VI"),
        SiteChoice(("O", "F"), 3, "VI")]


def test_every_assignment_is_charge_neutral_and_the_tolerance_factor_is_goldschmidts():
    choice = ElementChoice(ABX3)
    formulas = {"".join(choice.symbols(k)) for k in range(len(choice))}
    # K+ needs B2+ with F-, or B5+ with O2-; Sr2+ B4+ O / (no B1+); La3+ B3+ O
    assert {"KTiF", "KNbO", "SrTiO", "LaAlO", "LaTiO"} <= formulas
    assert "SrTiF" not in formulas and "KAlO" not in formulas and "LaNbF" not in formulas
    mult = np.array([s.multiplicity for s in ABX3])
    assert np.all((choice.oxidation * mult).sum(1) == 0)
    k = [j for j in range(len(choice)) if "".join(choice.symbols(j)) == "SrTiO"][0]
    r_sr, r_ti, r_o = ionic_states("Sr", "XII")[0][1], ionic_states("Ti", "VI")[0][1], 1.40
    assert choice.radius[k].tolist() == pytest.approx([r_sr, r_ti, r_o])
    t = tolerance_factor(*choice.radius[k])
    assert t == pytest.approx((1.44 + 1.40) / (np.sqrt(2) * (0.605 + 1.40)))  # SrTiO3: 1.00


def test_soft_choice_is_a_distribution_over_neutral_assignments_and_anneals_to_one_hot():
    choice = ElementChoice(ABX3)
    logits = torch.randn(5, 3, 3, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    p = choice.log_probabilities(logits, 1.0).exp()
    torch.testing.assert_close(p.sum(-1), torch.ones(5, dtype=torch.float64))
    t = torch.tensor([tolerance_factor(*r) for r in choice.radius], dtype=torch.float64)
    choice.expectation(logits, 1.0, window_penalty(t, 0.8, 1.0)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    top = [choice.log_probabilities(logits.detach(), T).exp().max(-1).values for T in (1.0, 1e-4)]
    assert torch.all(top[1] >= top[0]) and top[1].min() > 0.99  # annealed: one-hot
    outside = ((t < 0.8) | (t > 1.0)).double()  # the probability of leaving the window
    chosen = design(choice, outside, 32, steps=60, seed=1)
    t_chosen = t.numpy()[chosen]
    assert np.all((t_chosen >= 0.8) & (t_chosen <= 1.0))
    assert len(set(chosen.tolist())) > 1


def test_perovskite_benchmark_runs_from_the_command_line(cli, tmp_path):
    """Needs optuna (the 'bench' extra, which make test installs)."""
    config = tmp_path / "p.yaml"
    config.write_text("a_elements: [K, Sr]\nb_elements: [Ti, Nb]\nx_elements: [O, F]\n"
                      "n_samples: 8\ndesign_steps: 30\nlattice_steps: 5\n")
    code, out, err = cli("benchmark", "perovskite", config, "-o", tmp_path / "r.json")
    assert code == 0, err
    assert out.splitlines()[1].startswith("design") and out.splitlines()[2].startswith("tpe")
    result = json.loads((tmp_path / "r.json").read_text())
    design_, tpe = result["summary"]["design"], result["summary"]["tpe"]
    assert design_["samples"] == 8 and design_["neutral_rate"] == 1.0
    assert tpe["energy_evaluations"] >= design_["energy_evaluations"] > 0
    srtio3 = [r for r in result["design"] + result["tpe"] if r["formula"] == "SrTiO3"]
    for r in srtio3:  # CHGNet's cubic SrTiO3: a near 3.9 Å, well below its elements
        assert 3.8 < r["a_A"] < 4.0 and r["e_form_eV_per_atom"] < -3.0
