"""The panel's policy pictures as display lists (JCSAugmentLib/panel/policy_paint.py): read from
policy.json alone, without torch, matplotlib or Qt."""

import json
import subprocess
import sys

from JCSAugmentLib.panel.policy_paint import (IDENTITY, ROT90, option_colour, policy_pictures,
                                              read_policy, tea_picture, tra_picture)


def _policy(tmp_path):
    groups = [{"group": "scaling", "options": ["identity", "scale_0.05", "scale_0.45"],
               "probabilities": [0.5, 0.25, 0.25]},
              {"group": "rotation_axis0", "options": ["identity", "rotate_5", "rot90"],
               "logits": [0.0, 0.0, 0.0]}]
    data = {"format": "jcsaugment-policy", "version": 1,
            "tra": {"classes": [{"name": "background", "groups": groups},
                                {"name": "foreground", "groups": groups[:1]}]},
            "tea": {"options": ["identity", "flip_axis0", "flip_axis1", "rot90_axis0_+90"],
                    "probabilities": [0.1, 0.6, 0.2, 0.1]},
            "meta": {"iteration": 7, "backbone": "unet3d"}}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(data))
    return path, data


def test_pies_cover_the_circle_clockwise_from_noon(tmp_path):
    path, data = _policy(tmp_path)
    background = tra_picture(data, "background")
    assert len([t for t in background.texts if not t.bold]) == 2  # one caption per group
    first = [p for p in background.pies if p.x == background.pies[0].x]
    assert first[0].start16 == 90 * 16 and first[0].rgb == IDENTITY
    assert first[0].span16 == -180 * 16  # p = 0.5, clockwise
    assert abs(sum(p.span16 for p in first) + 360 * 16) <= len(first)
    # logits only: softmax, equal thirds; the 90-degree rotation has its own colour
    second = [p for p in background.pies if p not in first]
    assert [p.span16 for p in second] == [-1920, -1920, -1920]
    assert second[-1].rgb == ROT90
    assert "iteration 7" in background.texts[0].text
    foreground = tra_picture(data, "foreground")
    assert "foreground" in foreground.texts[0].text and len(foreground.pies) == 3


def test_tea_bars_most_probable_first(tmp_path):
    path, data = _policy(tmp_path)
    tea = tea_picture(data, top=2)
    labels = [t.text for t in tea.texts if t.align == "right"]
    assert labels == ["flip_axis0", "flip_axis1"]
    assert tea.boxes[0].width > tea.boxes[1].width
    pictures = policy_pictures(path)
    assert set(pictures) == {"tra_foreground", "tra_background", "tea"}
    assert read_policy(tmp_path)["meta"]["iteration"] == 7  # a run folder names its policy


def test_colours_rank_magnitudes():
    assert option_colour("identity", 0, 3) == IDENTITY
    assert option_colour("scale_0.05", 0, 5) != option_colour("scale_0.45", 4, 5)


def test_imports_neither_torch_nor_matplotlib_nor_qt():
    code = ("import sys, JCSAugmentLib.panel.policy_paint as m; "
            "print([n for n in ('torch', 'matplotlib', 'PySide6', 'numpy') if n in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out
