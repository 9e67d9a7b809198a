"""The ``jcsaugment`` command line.

Subcommands::

    jcsaugment ops [--json]                       the TRA and TEA operation tables
    jcsaugment preview IMAGE LABEL --out PNG      foreground/background patches under a policy
    jcsaugment train RUN | --dataset DIR --out RUN   train (--resume, --restart, options)
    jcsaugment stop RUN                           ask the run's worker to stop
    jcsaugment predict --run RUN --image F --out DIR   segment with the run's network and TEA
    jcsaugment evaluate --pred DIR --ref DIR      DSC, sensitivity, precision, HD95
    jcsaugment policy RUN --out PNG               the learned policies as pictures
    jcsaugment synth DIR | demo | augment-demo    the synthetic dataset, the main job, pictures
    jcsaugment bench augment|meta|infer           side-by-side ratios with the peers

Errors the user can fix (bad files, bad policies, bad options, a run folder in use) print one
line naming the problem and exit with status 2; nothing is written half-way.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


class UsageError(Exception):
    """An error in the user's input, reported in one line."""


def _cmd_ops(args) -> int:
    from .augment.tables import TRA_GROUPS, TEA_OPS, table_rows
    rows = table_rows()
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    n_tra = sum(g.size - 1 for g in TRA_GROUPS)
    print(f"TRA: {len(TRA_GROUPS)} groups, {n_tra} non-identity operations")
    for r in rows["tra"]:
        mag = "" if r["magnitude"] is None else f"{r['magnitude']:g}"
        print(f"  {r['group_index']:2d}.{r['option_index']}  {r['group']:<18} {r['op']:<14} "
              f"{r['kind']:<11} {mag}")
    kinds = {}
    for op in TEA_OPS:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    print(f"TEA: {len(TEA_OPS)} operations ({', '.join(f'{v} {k}' for k, v in kinds.items())})")
    for r in rows["tea"]:
        mag = "" if r["magnitude"] is None else f"{r['magnitude']:.4g}"
        print(f"  {r['index']:2d}  {r['op']:<22} {r['kind']:<13} {mag}")
    return 0


def _load_tra_policy(spec: str):
    import os
    from .policy import TRA_POLICY_NAMES, load_policy, make_tra_policy
    if spec.lower() in TRA_POLICY_NAMES:
        return make_tra_policy(spec)
    if not os.path.exists(spec):
        raise UsageError(f"--policy {spec!r} is neither a policy name "
                         f"({', '.join(TRA_POLICY_NAMES)}) nor an existing file")
    tra, _tea, _meta = load_policy(spec)
    if tra is None:
        raise UsageError(f"{spec}: the policy file has no 'tra' part")
    return tra


def _cmd_preview(args) -> int:
    from .augment.preview import make_preview
    from .charts.preview_grid import draw_preview_grid
    from .io.volume import read_images, read_label
    policy = _load_tra_policy(args.policy)
    image = read_images([args.image] + list(args.channel or []))
    label = read_label(args.label, reference=image)
    roi = None
    if args.roi:
        roi = read_label(args.roi, reference=image).array[0] > 0
    if args.samples < 1:
        raise UsageError("--samples must be at least 1")
    rows = make_preview(image.array, label.array, policy, n=args.samples,
                        patch_size=tuple(args.patch_size), seed=args.seed, roi=roi,
                        device=args.device)
    title = f"{args.policy} policy: {len(rows[0].images) - 1} samples per patch"
    draw_preview_grid([r.as_grid_row() for r in rows], out_path=args.out, title=title,
                      channel=args.show_channel)
    if args.save_arrays:  # the run folder's preview format, so one reader reads both
        from .run.folder import save_preview_arrays
        save_preview_arrays(args.save_arrays, rows)
    print(f"wrote {args.out}")
    return 0


def _cmd_bench(args) -> int:
    if args.what == "infer":
        from .bench.infer_bench import run_infer_bench
        result = run_infer_bench(device=args.device, size=tuple(args.size),
                                 patch=args.patch or 64, base_features=args.base_features,
                                 print_table=not args.json)
    elif args.what == "meta":
        from .bench.meta_bench import run_meta_bench
        result = run_meta_bench(device=args.device, patch=args.patch or 48,
                                batch=args.batch or 4, iterations=args.repeats or 3,
                                print_table=not args.json)
    else:
        from .bench.augment_bench import run_augment_bench
        result = run_augment_bench(device=args.device, batch=args.batch or 10,
                                   patch=args.patch or 64, repeats=args.repeats or 5,
                                   peers=not args.no_peers, print_table=not args.json)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 0


def _cmd_train(args) -> int:
    import os
    from .run.folder import RunFolder
    from .run.job import JobError
    from .run.job_builder import TrainSettings, new_job as build_new_job
    from .train.worker import run_worker
    # the train options that are settings carry TrainSettings' names (--time-budget's dest
    # included): the job fields they set come from the one mapping in run/job_builder.py
    settings = TrainSettings.from_mapping(vars(args))
    overrides = settings.to_overrides()
    new_job = None
    if args.dataset or args.out:
        if not (args.dataset and args.out):
            raise UsageError("--dataset and --out go together (or give a RUN_DIR with a "
                             "job.json)")
        if args.run_dir:
            raise UsageError("give either RUN_DIR or --dataset/--out, not both")
        folder = RunFolder(args.out)
        if folder.has_job() and not args.resume:
            raise UsageError(f"{folder.path} already holds a job.json: resume it with "
                             f"'jcsaugment train {args.out} --resume' or choose another --out")
        if not args.resume:
            data = {"dataset": os.path.abspath(args.dataset)}
            if args.splits:
                data["splits"] = _read_splits(args.splits)
            try:  # checked here as a whole, written by the worker once it holds the lock
                new_job = build_new_job(data, settings)
            except JobError as e:
                raise UsageError(str(e)) from None
            overrides = {}  # already in the new job
    else:
        if not args.run_dir:
            raise UsageError("give a RUN_DIR holding job.json, or --dataset DIR --out RUN_DIR")
        folder = RunFolder(args.run_dir)
        if not os.path.isdir(folder.path):
            raise UsageError(f"{args.run_dir}: no such run folder (create one with --dataset "
                             f"DIR --out {args.run_dir})")
    return run_worker(folder, resume=args.resume, quiet=args.quiet, overrides=overrides,
                      restart=args.restart, new_job=new_job)


def _read_splits(path: str):
    """A splits.json file: ``{"train": [ids], "validation": [ids], "test": [ids]}``."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"--splits {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--splits {path}: cannot read it ({e})") from None
    except ValueError as e:
        raise UsageError(f"--splits {path} is not valid JSON: {e}") from None


def _cmd_predict(args) -> int:
    from .infer.predict import PredictOptions, predict_cases
    from .run.folder import RunFolder
    folder = RunFolder(args.run)
    images = [f.split(",") for f in (args.image or [])]
    if args.split:
        from .data.dataset import DataError
        from .run.job import JobError
        from .train.trainer import dataset_and_splits
        try:
            dataset, splits = dataset_and_splits(folder.job(), folder.path)
        except (JobError, DataError) as e:
            raise UsageError(f"--split {args.split}: {e}") from None
        if not splits[args.split]:
            raise UsageError(f"--split {args.split}: the run's {args.split} split is empty")
        images += [dataset.case(cid).images for cid in splits[args.split]]
    if not images:
        raise UsageError("give --image FILE (channels of one case joined by commas; repeat "
                         "for more cases) or --split test")
    options = PredictOptions(tea=args.tea, z=args.z, step=args.step,
                             uncertainty=args.uncertainty, checkpoint=args.checkpoint,
                             device=args.device, overwrite=args.overwrite)
    # progress names the checkpoint used ("using best.pt (best, iteration 40)") and the TEA
    for r in predict_cases(folder, images, args.out, options, progress=print):
        print(f"wrote {r['prediction']}" + (f" and {r['uncertainty']}" if "uncertainty" in r
                                            else ""))
    return 0


def _cmd_policy(args) -> int:
    import os
    from .charts.policy_chart import draw_policy_file
    from .run.folder import RunFolder
    if args.run.endswith(".json") and not os.path.isdir(args.run):
        path, what = args.run, "the policy file"
    else:
        path, what = RunFolder(args.run).policy_path, "the run folder's policy"
    if not os.path.isfile(path):
        raise UsageError(f"{path} not found ({what}): give a run folder that has learned a "
                         f"policy, or a policy JSON file")
    draw_policy_file(path, args.out, initial=None if args.initial == "none" else args.initial)
    print(f"wrote {args.out}")
    return 0


def _cmd_stop(args) -> int:
    import os
    from .run.folder import RunFolder
    folder = RunFolder(args.run_dir)
    if os.path.lexists(folder.path) and not os.path.isdir(folder.path):
        raise UsageError(f"{folder.path} is a file, not a run folder")
    folder.request_stop(reason="jcsaugment stop")  # RunFolderError when there is no folder
    print(f"asked the worker of {folder.path} to stop after its current iteration")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(args.out, quick=args.quick, device=args.device)
    return 0


def _cmd_augment_demo(args) -> int:
    from .demo_augment import run_augment_demo
    run_augment_demo(args.out, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .run.job import SPLITS, TEA_CHOICES
    p = argparse.ArgumentParser(prog="jcsaugment", description=(
        "Joint class-specific training- and test-time augmentation for 3D segmentation."))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ops", help="print the TRA and TEA operation tables")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_ops)

    s = sub.add_parser("preview", help="draw foreground/background patches under a TRA policy")
    s.add_argument("image", help="image volume (NIfTI, NRRD, MHA)")
    s.add_argument("label", help="label map on the image's grid")
    s.add_argument("--channel", action="append", metavar="FILE",
                   help="another image channel on the same grid (repeatable)")
    s.add_argument("--policy", default="nnunet",
                   help="nnunet, deepmedic, randaugment-s/m/l, none, or a policy JSON file")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--samples", type=int, default=4, help="augmented samples per patch")
    s.add_argument("--patch-size", type=int, nargs=3, default=(64, 64, 64), metavar=("D", "H", "W"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--roi", help="mask for background centres (e.g. a brain mask)")
    s.add_argument("--show-channel", type=int, default=0, help="channel drawn in the grid")
    s.add_argument("--save-arrays", metavar="NPZ", help="also save the patches as .npz")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=_cmd_preview)

    s = sub.add_parser("bench", help="benchmarks (side-by-side ratios with the peers)")
    s.add_argument("what", choices=["augment", "meta", "infer"],
                   help="augment: TRA patches/s vs the peers; meta: s/iteration of joint "
                        "learning vs heuristic TRA; infer: one volume with TEA z = 1, 4, 8")
    s.add_argument("--size", type=int, nargs=3, default=(155, 240, 240), metavar=("Z", "Y", "X"),
                   help="infer: volume size")
    s.add_argument("--base-features", type=int, default=10, help="infer: U-Net base width")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    s.add_argument("--batch", type=int, help="batch size (augment 10, meta 4)")
    s.add_argument("--patch", type=int, help="cubic patch edge (augment 64, meta 48)")
    s.add_argument("--repeats", type=int,
                   help="timed batches per pipeline (augment 5) or blocks of 10 iterations "
                        "(meta 3)")
    s.add_argument("--no-peers", action="store_true", help="time our cascade only")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("train", help="train a network while learning its augmentation")
    s.add_argument("run_dir", nargs="?", help="run folder holding job.json")
    s.add_argument("--dataset", help="nnU-Net v2 raw or Decathlon folder (writes job.json)")
    s.add_argument("--out", help="run folder to create with --dataset")
    s.add_argument("--splits", help="splits.json: {\"train\": [ids], \"validation\": [ids], "
                                    "\"test\": [ids]}")
    s.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    s.add_argument("--restart", action="store_true",
                   help="start a run folder that holds a checkpoint again from iteration 0 "
                        "(its checkpoints are kept in checkpoints/before-restart-TIME/)")
    s.add_argument("--quiet", action="store_true", help="no progress bar (for machines)")
    s.add_argument("--backbone", choices=["unet3d", "deepmedic"])
    s.add_argument("--mode", choices=["none", "heuristic", "randaugment-s", "randaugment-m",
                                      "randaugment-l", "learned", "class-specific", "joint",
                                      "tea-only"])
    s.add_argument("--init", choices=["nnunet", "deepmedic"])
    s.add_argument("--epochs", type=int)
    s.add_argument("--iterations-per-epoch", type=int)
    s.add_argument("--patch-size", type=int, nargs=3, metavar=("D", "H", "W"))
    s.add_argument("--base-features", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--val-batch-size", type=int)
    s.add_argument("--tea-copies", type=int)
    s.add_argument("--policy-every", type=int)
    s.add_argument("--meta-grad", choices=["exact", "finite-difference"])
    s.add_argument("--pretrained", help="checkpoint of a trained model (tea-only mode)")
    s.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--seed", type=int)
    s.add_argument("--time-budget", type=float, metavar="MINUTES", dest="time_budget_minutes")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("predict", help="segment images with a trained run and TEA")
    s.add_argument("--run", required=True, help="the run folder")
    s.add_argument("--image", action="append",
                   help="an image to segment (channels of one case joined by commas); repeat")
    s.add_argument("--split", choices=SPLITS,
                   help="segment every case of this split of the run's dataset")
    s.add_argument("--out", required=True, help="output folder (one label map per case)")
    s.add_argument("--tea", choices=TEA_CHOICES,
                   help="TEA at inference (default: the job's inference.tea)")
    s.add_argument("--z", type=int, help="learned TEA: how many top ops (default: the job's "
                                         "inference.tea_top_z, 8 U-Net, 4 DeepMedic)")
    s.add_argument("--step", type=float, help="sliding-window step, a fraction of the patch "
                                              "(default: the job's inference.step, 0.5)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace label maps that already exist in --out")
    s.add_argument("--uncertainty", action="store_true",
                   help="also write a voxel-wise TEA disagreement map")
    s.add_argument("--checkpoint", default="best", choices=["best", "last"])
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("policy", help="draw a run's learned policies (TRA pies, TEA bars)")
    s.add_argument("run", help="run folder (reads policy.json) or a policy JSON file")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--initial", default="nnunet", choices=["nnunet", "deepmedic", "none"],
                   help="the heuristic to compare with (the run's own when it says)")
    s.set_defaults(func=_cmd_policy)

    from .evaluate.evaluate_folders import add_evaluate_arguments, run_evaluate_from_args
    s = sub.add_parser("evaluate", help="DSC, sensitivity, precision, HD95 of label maps")
    add_evaluate_arguments(s)
    s.set_defaults(func=run_evaluate_from_args)

    s = sub.add_parser("stop", help="ask a running worker to stop (it checkpoints first)")
    s.add_argument("run_dir", help="the run folder")
    s.set_defaults(func=_cmd_stop)

    from .synth import add_synth_arguments, run_synth_from_args
    s = sub.add_parser("synth", help="write the synthetic two-site dataset (nnU-Net layout)")
    add_synth_arguments(s)
    s.set_defaults(func=run_synth_from_args)

    s = sub.add_parser("demo", help="the main job: heuristic vs joint learning on the "
                                    "synthetic dataset, with a report")
    s.add_argument("--out", default="jcsaugment-demo", help="report folder")
    s.add_argument("--quick", action="store_true", help="one seed, a short budget (~2 min)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("augment-demo", help="preview and policy pictures on a synthetic case")
    s.add_argument("--out", default="jcsaugment-demo", help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_augment_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .evaluate.evaluate_folders import EvaluationError
    from .infer.predict import PredictionError
    from .io.volume import VolumeError
    from .policy.policy_json import PolicyFileError
    from .run.checkpoint import CheckpointError
    from .run.control import RunFolderError
    from .run.job import JobError
    try:
        return args.func(args)
    except (UsageError, VolumeError, PolicyFileError, EvaluationError, PredictionError,
            RunFolderError, CheckpointError, JobError) as e:
        print(f"jcsaugment {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
