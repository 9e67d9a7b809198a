"""The command line, end to end, on small synthetic files."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from JCSAugmentLib.cli import main


@pytest.fixture()
def case(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(30, 34, 38)).astype(np.float32)
    lab = np.zeros((30, 34, 38), np.uint8)
    lab[10:18, 12:20, 14:24] = 1
    lab[12:15, 14:17, 16:19] = 3
    paths = {}
    for name, arr in (("image", img), ("label", lab)):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((0.8, 0.8, 2.0))
        im.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
        p = tmp_path / f"{name}.nrrd"
        sitk.WriteImage(im, str(p))
        paths[name] = str(p)
    return paths


def test_ops_json(capsys):
    assert main(["ops", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows["tea"]) == 84
    assert sum(1 for r in rows["tra"] if r["op"] != "identity") == 47
    assert {"group", "op", "kind", "magnitude"} <= set(rows["tra"][0])


def test_ops_text(capsys):
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "15 groups, 47 non-identity" in out and "84 operations" in out


@pytest.mark.parametrize("policy", ["nnunet", "deepmedic"])
def test_preview_writes_a_png(case, tmp_path, policy):
    out = tmp_path / "p.png"
    npz = tmp_path / "p.npz"
    assert main(["preview", case["image"], case["label"], "--policy", policy, "--out", str(out),
                 "--samples", "2", "--patch-size", "16", "16", "16",
                 "--save-arrays", str(npz)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    arrays = np.load(npz)
    assert arrays["foreground_images"].shape == (3, 1, 16, 16, 16)
    assert set(np.unique(arrays["foreground_labels"])) <= {0, 1, 3}
    # the run folder's preview format: the panel's reader reads it
    from JCSAugmentLib.panel.pictures import preview_volumes
    assert preview_volumes(str(npz))["foreground sample 2 label"].shape == (16, 16, 16)


def test_preview_with_a_policy_file(case, tmp_path, capsys):
    assert main(["augment-demo", "--out", str(tmp_path / "demo")]) == 0
    pol = tmp_path / "demo" / "policy_nnunet.json"
    out = tmp_path / "q.png"
    assert main(["preview", case["image"], case["label"], "--policy", str(pol), "--out",
                 str(out), "--samples", "1", "--patch-size", "16", "16", "16"]) == 0
    assert out.exists()
    for name in ("preview_nnunet.png", "preview_deepmedic.png", "ops.json", "summary.json"):
        assert (tmp_path / "demo" / name).exists()
    assert "all exact: True" in (tmp_path / "demo" / "summary.json").read_text()


def test_preview_bad_inputs_fail_cleanly(case, tmp_path, capsys):
    out = tmp_path / "never.png"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "jcsaugment-policy", "version": 1,
                               "tra": {"classes": [{"groups": []}]}}))
    assert main(["preview", case["image"], case["label"], "--policy", str(bad),
                 "--out", str(out)]) == 2
    assert "needs 15 groups" in capsys.readouterr().err
    assert main(["preview", case["image"], str(tmp_path / "nope.nii.gz"), "--out",
                 str(out)]) == 2
    assert "nope.nii.gz" in capsys.readouterr().err
    assert main(["preview", case["image"], case["label"], "--policy", "autoaugment",
                 "--out", str(out)]) == 2
    assert "neither a policy name" in capsys.readouterr().err
    assert not out.exists()


def test_bench_runs_small_without_peers(capsys):
    assert main(["bench", "augment", "--no-peers", "--repeats", "1", "--batch", "2",
                 "--patch", "24", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["results"]["jcsaugment"]["patches_per_s"] > 0
    assert res["ratios"] == {}


def test_policy_draws_a_run_folders_policy(tmp_path, capsys):
    from JCSAugmentLib.policy.initial import make_tea_policy, make_tra_policy
    from JCSAugmentLib.policy.policy_json import save_policy
    from JCSAugmentLib.run.folder import RunFolder
    run = RunFolder(tmp_path / "run")
    out = tmp_path / "policy.png"
    assert main(["policy", run.path, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and run.policy_path in err and not out.exists()
    os.makedirs(run.path)
    save_policy(run.policy_path, make_tra_policy("nnunet"), make_tea_policy("nnunet"),
                {"init": "nnunet"})
    assert main(["policy", run.path, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
