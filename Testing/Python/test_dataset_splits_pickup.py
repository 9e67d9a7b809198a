"""``jcsaugment train --dataset DIR`` takes the splits the dataset folder carries: our
``splits.json``, or nnU-Net v2's ``splits_final.json`` at ``--fold`` (default 0, test split
empty); an explicit ``--splits`` wins; one line on stdout says which file was used."""

import json

import pytest

from JCSAugmentLib import cli
from JCSAugmentLib.data.dataset import DataError
from JCSAugmentLib.data.splits import choose_dataset_splits, read_splits_file
from JCSAugmentLib.run.folder import RunFolder

OURS = {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}
FOLDS = [{"train": ["a", "b", "c"], "val": ["d"]}, {"train": ["b", "c", "d"], "val": ["a"]}]


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "Dataset001_Blobs"
    d.mkdir()
    (d / "dataset.json").write_text("{}")  # the job is checked here; cases are read at training
    return d


@pytest.fixture
def no_training(monkeypatch):
    from JCSAugmentLib.train import worker
    monkeypatch.setattr(worker, "_run_main", lambda *a, **k: 0)


def _train(tmp_path, dataset, capsys, *extra):
    out = str(tmp_path / f"run{len(list(tmp_path.iterdir()))}")
    code = cli.main(["train", "--dataset", str(dataset), "--out", out, *extra])
    captured = capsys.readouterr()
    splits_lines = [l for l in captured.out.splitlines() if l.startswith("splits: ")]
    return code, out, splits_lines, captured.err


def test_the_dataset_folders_splits_json_is_used_and_named(tmp_path, dataset, capsys,
                                                          no_training):
    (dataset / "splits.json").write_text(json.dumps(OURS))
    (dataset / "splits_final.json").write_text(json.dumps(FOLDS))  # ours comes first
    code, out, lines, _ = _train(tmp_path, dataset, capsys)
    assert code == 0 and RunFolder(out).job().data.splits == OURS
    assert lines == [f"splits: {dataset / 'splits.json'} (2 train, 1 validation, 1 test)"]


def test_nnunet_splits_final_with_a_fold_and_an_empty_test_split(tmp_path, dataset, capsys,
                                                                 no_training):
    (dataset / "splits_final.json").write_text(json.dumps(FOLDS))
    code, out, lines, _ = _train(tmp_path, dataset, capsys)
    assert code == 0
    assert RunFolder(out).job().data.splits == {"train": ["a", "b", "c"], "validation": ["d"],
                                                "test": []}
    assert lines == [f"splits: {dataset / 'splits_final.json'} fold 0 (3 train, 1 validation, "
                     f"0 test)"]
    code, out, lines, _ = _train(tmp_path, dataset, capsys, "--fold", "1")
    assert code == 0 and RunFolder(out).job().data.splits["validation"] == ["a"]
    assert "fold 1" in lines[0]
    code, out, _, err = _train(tmp_path, dataset, capsys, "--fold", "5")
    assert code == 2 and "folds 0 to 1" in err and not RunFolder(out).has_job()


def test_an_explicit_splits_file_wins(tmp_path, dataset, capsys, no_training):
    (dataset / "splits.json").write_text(json.dumps(OURS))
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"train": ["d", "c"], "val": ["b"]}))  # "val" is validation
    code, out, lines, _ = _train(tmp_path, dataset, capsys, "--splits", str(mine))
    assert code == 0
    assert RunFolder(out).job().data.splits == {"train": ["d", "c"], "validation": ["b"],
                                                "test": []}
    assert lines == [f"splits: {mine} (2 train, 1 validation, 0 test)"]
    code, out, _, err = _train(tmp_path, dataset, capsys, "--splits", str(tmp_path / "no.json"))
    assert code == 2 and "no.json does not exist" in err


def test_no_file_means_drawn_from_the_seed_and_fold_needs_splits_final(tmp_path, dataset,
                                                                       capsys, no_training):
    code, out, lines, _ = _train(tmp_path, dataset, capsys)
    assert code == 0 and RunFolder(out).job().data.splits is None
    assert len(lines) == 1 and "drawn from the job's split seed" in lines[0]
    code, _, _, err = _train(tmp_path, dataset, capsys, "--fold", "1")
    assert code == 2 and "has no splits_final.json" in err


def test_reading_either_form(tmp_path):
    ours, folds = tmp_path / "s.json", tmp_path / "f.json"
    ours.write_text(json.dumps(OURS))
    folds.write_text(json.dumps(FOLDS))
    assert read_splits_file(ours) == OURS
    assert read_splits_file(folds, 1)["train"] == ["b", "c", "d"]
    with pytest.raises(DataError, match="--fold 1 does not apply"):
        read_splits_file(ours, 1)
    (tmp_path / "bad.json").write_text(json.dumps([{"train": ["a"]}]))
    with pytest.raises(DataError, match="'train' and 'val'"):
        read_splits_file(tmp_path / "bad.json")
    assert choose_dataset_splits(tmp_path).splits is None
