"""Panel pictures: policy pies / TEA bars from policy.json or a policy event, curves."""

import json
import os

import pytest

from JCSAugmentLib.panel.monitor import ViewState
from JCSAugmentLib.panel.pictures import (PICTURE_NAMES, curve_png, main, policy_dict_from_event,
                                          policy_pngs, policy_pngs_command, preview_volumes,
                                          section_pictures)
from JCSAugmentLib.policy.initial import make_tea_policy, make_tra_policy
from JCSAugmentLib.policy.policy_json import save_policy

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    tra = make_tra_policy("nnunet")
    with __import__("torch").no_grad():
        tra.policies[1].logits[0][0] += 2.0  # the foreground policy differs
    save_policy(str(run / "policy.json"), tra, make_tea_policy("nnunet"),
                {"init": "nnunet", "backbone": "unet3d", "iteration": 7})
    return str(run / "policy.json")


def event_of(policy_json):
    with open(policy_json) as f:
        d = json.load(f)
    return {"t": 1.0, "kind": "policy", "seq": 3, "iteration": 7,
            "tra": {c["name"]: [g["probabilities"] for g in c["groups"]]
                    for c in d["tra"]["classes"]},
            "tea": d["tea"]["probabilities"]}


def test_policy_pngs_from_the_file_and_from_the_event(policy_file):
    from_file = policy_pngs(policy_file)
    assert set(from_file) == set(PICTURE_NAMES)
    assert all(v.startswith(PNG) for v in from_file.values())
    assert from_file["tra_foreground"] != from_file["tra_background"]
    ev = event_of(policy_file)
    from_event = policy_pngs(ev, initial="nnunet", parts=("tra_foreground", "tea"))
    assert from_event["tra_foreground"] == from_file["tra_foreground"]  # same drawing
    assert from_event["tea"] == from_file["tea"] and from_event["tra_background"] is None
    with pytest.raises(ValueError, match="unknown picture"):
        policy_pngs(ev, parts=("pies",))
    from JCSAugmentLib.panel.pictures import _load
    tra, tea, meta = _load(os.path.dirname(policy_file))  # a run folder reads its policy.json
    assert meta["iteration"] == 7 and tea is not None and tra.class_names == ["background",
                                                                              "foreground"]


def test_a_one_class_policy_draws_the_same_row_twice():
    ev = {"kind": "policy", "iteration": 1,
          "tra": {"class0": [[1.0 / g] * g for g in (6, 5, 5, 5, 2, 2, 2, 4, 4, 4, 4, 4, 7, 4,
                                                       4)]},
          "tea": None}
    out = policy_pngs(ev, initial=None)
    assert out["tra_foreground"] == out["tra_background"] and out["tea"] is None


def test_event_probabilities_are_renormalised():
    d = policy_dict_from_event({"tra": {}, "tea": [2.0] + [0.0] * 83, "iteration": 4})
    assert d["tea"]["probabilities"][0] == 1.0 and d["meta"] == {"iteration": 4}
    with pytest.raises(ValueError, match="84 probabilities"):
        policy_dict_from_event({"tea": [1.0]})


def test_the_command_line_writes_the_files(policy_file, tmp_path, capsys):
    ev_file = str(tmp_path / "event.json")
    with open(ev_file, "w") as f:
        json.dump(event_of(policy_file), f)
    assert main([ev_file, str(tmp_path / "out"), "--initial", "none"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f"{k}.png" for k in PICTURE_NAMES)
    assert main([str(tmp_path / "missing.json"), str(tmp_path / "o2")]) == 2
    cmd = policy_pngs_command(policy_file, str(tmp_path / "o"), python="py")
    assert cmd[:3] == ["py", "-m", "JCSAugmentLib.panel.pictures"]


def test_curve_png_and_section_pictures(tmp_path):
    v = ViewState(loss_curves={"train": [(1, 1.0), (50, 0.2), (100, 0.05)],
                               "val": [(1, 1.2), (100, 0.3)]},
                  dice_curve=[(1, 0.2), (2, 0.5), (3, 0.7)], message="Iteration 100/1000")
    assert curve_png(v).startswith(PNG)
    assert curve_png(ViewState()).startswith(PNG)  # nothing yet: empty axes
    paths = section_pictures(str(tmp_path / "pics"))
    assert set(paths) == set(PICTURE_NAMES) and all(os.path.exists(p) for p in paths.values())


def test_preview_volumes(tmp_path):
    import numpy as np
    path = str(tmp_path / "preview_latest.npz")
    with open(path, "wb") as f:
        np.savez_compressed(f, foreground_images=np.arange(2 * 2 * 24).reshape(2, 2, 2, 3, 4),
                            foreground_labels=np.ones((2, 2, 3, 4), np.uint8))
    vols = preview_volumes({"png": "x.png", "arrays": path}, channel=1)
    assert sorted(vols) == ["foreground label", "foreground original", "foreground sample 1",
                            "foreground sample 1 label"]
    assert vols["foreground sample 1"].shape == (2, 3, 4)
    assert vols["foreground sample 1"][0, 0, 0] == 24 * 3  # sample 1, channel 1
    # a run folder: its latest preview
    from JCSAugmentLib.run.folder import RunFolder
    run = RunFolder(tmp_path / "run")
    os.makedirs(run.previews_dir)
    os.replace(path, run.preview_path("npz"))
    assert sorted(preview_volumes(run)) == sorted(vols)
