"""A job's cases and splits: the one place a run's ``job.json`` data section becomes a dataset
and its train / validation / test split. Torch-free, so the Slicer panel's GUI process can list
a run's cases (the policy gallery) exactly as the trainer will read them."""

from __future__ import annotations

from ..run.job import Job, resolve_path
from .dataset import dataset_from_list, discover_dataset
from .splits import load_splits, make_splits


def dataset_and_splits(job: Job, base_dir: str):
    """The job's dataset (a folder, or the listed cases with paths relative to ``base_dir``)
    and its train / validation / test split (given, or drawn from the split seed)."""
    def resolve(p):
        return None if p is None else resolve_path(base_dir, p)

    d = job.data
    if d.dataset is not None:
        dataset = discover_dataset(resolve(d.dataset))
    else:
        entries = [{"id": c.id, "images": [resolve(p) for p in c.images],
                    "label": resolve(c.label), "roi": resolve(c.roi) if c.roi else None}
                   for c in d.cases]
        dataset = dataset_from_list(entries)
    ids = dataset.case_ids()
    if d.splits is not None:
        splits = load_splits(d.splits, ids)
    else:
        fr = d.split_fractions
        splits = make_splits(ids, d.split_seed, (fr["train"], fr["validation"], fr["test"]))
    return dataset, splits
