"""Known answers through the product's own loop (``Trainer.step``), not a hand-built replica.

The cases and runs are those of ``benchmarks/trainer_known_answers.py`` (its docstring says
why the cases are capped balls). The README's "Does the product's loop move the policy the
right way?" gives the measured pass rates on more seeds than these tests use.

Only the TEA known answer is asserted. The TRA one (a ``learned`` run raising P(mirror axis 0)
above its start and above a control) holds in about 6 seeds of 10 under every budget measured
(README), short of a reliable 4 of 5, so no test asserts it.
"""

import pytest
import torch

from benchmarks.trainer_known_answers import TEAProbeSettings, tea_known_answer

SEEDS = [0, 1, 2, 3, 4]


@pytest.fixture
def one_thread():
    # on a shared machine two torch threads spin against other processes and run many times
    # slower; one thread keeps the run's cost its own
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tea_only_on_a_site_a_model_learns_an_op_that_undoes_a_mirrored_validation_site(
        one_thread):
    # Per seed: a U-Net trained on site A through Trainer.step (mode "none"), saved as the
    # worker saves it, loaded by mode "tea-only" as training.pretrained; the TEA policy is
    # learned on site A mirrored along axis 0 (shifted) and on site A itself (control), the
    # product's tea-only defaults (tea_lr 5e-3, 10 copies, nnU-Net initial TEA policy).
    # Site A is symmetric in distribution along axes 1 and 2, so the ops that undo the shift
    # are the four that flip axis 0 (flip_axis0, rot90_axis1_180, rot90_axis2_180, flip_all).
    result = tea_known_answer(SEEDS, TEAProbeSettings(), log=lambda *a, **k: None)
    rows = result["rows"]
    table = "\n".join(
        f"seed {r['seed']}: Dice site A {r['dice_site_a']:.3f}, frozen on shifted "
        f"{r['dice_shifted_frozen']:.3f}; shifted top {r['shifted_top']} "
        f"(P undo {r['shifted']['final']['p_undo_axis0']:.3f} from "
        f"{r['shifted']['initial']['p_undo_axis0']:.3f}), control top {r['control_top']} "
        f"(P undo {r['control']['final']['p_undo_axis0']:.3f})" for r in rows)
    # the premise: the shift hurts the frozen model (else there is nothing for TEA to undo);
    # its Dice is on the trainer's few fixed validation patches, so only "lower" is asked
    hurt = sum(r["dice_shifted_frozen"] < r["dice_site_a"] for r in rows)
    assert hurt >= 4, table
    # the known answer: the most probable TEA op undoes the shift in the shifted run and not in
    # the control, and the mass on the undoing ops rises above its start and the control's.
    # flip_axis0 itself is not asserted: the four undoing ops are equivalent on this site, so
    # which of them ends on top is a draw (README: flip_axis0 in 5 of 20 seeds)
    assert result["passes_undo"] >= 4, table
