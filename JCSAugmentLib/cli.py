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


def _check_device(spec: str) -> None:
    """``--device``: refuse CUDA on a machine without it in one line (torch's own error is an
    AssertionError from deep inside)."""
    if not isinstance(spec, str) or not spec.startswith("cuda"):
        return
    import torch
    if not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: torch sees no CUDA device here (torch "
                         f"{torch.__version__}); use --device cpu")
    index = spec.partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) "
                         f"exist")


class _writing:
    """``with _writing("--out", path):`` -- an OSError while writing ``path`` (a folder in the
    way, a read-only folder, a full disk) becomes one line naming the option and the path,
    not the temp file the atomic write was using."""

    def __init__(self, option: str, path: str):
        self.option, self.path = option, path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, _tb):
        if exc is None or not isinstance(exc, OSError) or isinstance(exc, BrokenPipeError):
            return False
        import errno
        import os
        from .run.control import describe_os_error
        if os.path.isdir(self.path):
            why = "is a folder; give a file name"
        elif exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            why = "cannot be written: no space left on device"
        else:
            why = "cannot be written: " + describe_os_error(OSError(exc.errno, exc.strerror))
        raise UsageError(f"{self.option} {self.path} {why}") from None


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
    _check_device(args.device)
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
    with _writing("--out", args.out):
        draw_preview_grid([r.as_grid_row() for r in rows], out_path=args.out, title=title,
                          channel=args.show_channel)
    if args.save_arrays:  # the run folder's preview format, so one reader reads both
        from .run.folder import save_preview_arrays
        save_preview_arrays(args.save_arrays, rows)
    print(f"wrote {args.out}")
    return 0


def _whole_numbers(text: str) -> List[int]:
    """``"1,8"`` (or ``"64"``) -> [1, 8]: an argparse type for comma-separated whole numbers."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole "
                                         f"numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("no numbers given")
    return values


def _bench_size(parts) -> tuple:
    """``--shape 32,32,32`` or ``--size 32 32 32`` (None: the default) -> (z, y, x)."""
    from .bench.infer_bench import DEFAULT_SIZE
    if parts is None:
        return DEFAULT_SIZE
    values = [v for part in parts for v in part]
    if len(values) != 3:
        raise UsageError(f"--shape takes 3 whole numbers (Z,Y,X or Z Y X), got "
                         f"{','.join(map(str, values))}")
    return tuple(values)


def _cmd_bench(args) -> int:
    if args.what == "infer":
        from .bench.infer_bench import DEFAULT_PATCH, run_infer_bench
        try:
            result = run_infer_bench(device=args.device, size=_bench_size(args.size),
                                     patch=args.patch or DEFAULT_PATCH,
                                     base_features=args.base_features, zs=tuple(args.zs),
                                     rounds=args.rounds, step=args.step,
                                     batch_windows=args.batch_windows, peers=not args.no_peers,
                                     print_table=not args.json)
        except ValueError as e:
            raise UsageError(f"bench infer: {e}") from None
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
    _check_compare_options(args)
    new_job = None
    if args.dataset or args.out:
        if not (args.dataset and args.out):
            raise UsageError("--dataset and --out go together (or give a RUN_DIR with a "
                             "job.json)")
        if args.run_dir:
            raise UsageError("give either RUN_DIR or --dataset/--out, not both")
        folder = RunFolder(args.out)
        if folder.has_job() and not args.resume and not _is_comparison(folder):
            if not folder.has_checkpoint():  # a start that failed before its first checkpoint
                raise UsageError(f"{folder.path} already holds a job.json but no checkpoint "
                                 f"(its last start failed; see status.json): start it again "
                                 f"with 'jcsaugment train {args.out}' or choose another --out")
            raise UsageError(f"{folder.path} already holds a job.json: resume it with "
                             f"'jcsaugment train {args.out} --resume' or choose another --out")
        if not args.resume:
            data = {"dataset": os.path.abspath(args.dataset)}
            from .data.dataset import DataError
            from .data.splits import choose_dataset_splits
            try:  # --splits FILE, else the dataset folder's splits.json / splits_final.json
                chosen = choose_dataset_splits(args.dataset, args.splits, args.fold)
            except DataError as e:
                raise UsageError(f"--splits: {e}" if args.splits else str(e)) from None
            if not args.quiet:  # quiet silences what is not an error
                print(chosen.description)
            if chosen.splits is not None:
                data["splits"] = chosen.splits
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
    if args.compare is not None or _is_comparison(folder):
        return _train_comparison(args, folder, overrides, new_job)
    return run_worker(folder, resume=args.resume, quiet=args.quiet, overrides=overrides,
                      restart=args.restart, new_job=new_job,
                      hold_lock_until_exit=getattr(args, "own_process", False))


def _is_comparison(folder) -> bool:
    from .run.compare import is_comparison
    return is_comparison(folder.path)


def _check_compare_options(args) -> None:
    """``--compare`` / ``--seeds``, checked before anything is read or written."""
    from .run.compare import BASELINES, LEARNED_MODES
    if args.compare is None:
        if args.seeds is not None:
            raise UsageError("--seeds goes with --compare heuristic (each seed trains one "
                             "pair)")
        return
    if args.compare not in BASELINES:
        raise UsageError(f"--compare {args.compare!r}: the method to compare with is "
                         f"{' or '.join(BASELINES)}")
    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: must be at least 1 (each seed trains one "
                         f"pair)")
    if args.mode is not None and args.mode not in LEARNED_MODES:
        what = "the heuristic itself" if args.mode == args.compare else "a mode that learns no TRA"
        raise UsageError(f"--compare {args.compare} compares a learned mode with heuristic TRA, "
                         f"but --mode {args.mode} is {what}: choose --mode "
                         f"{', '.join(LEARNED_MODES)}")
    if args.restart:
        raise UsageError("--restart does not apply to a comparison: continue it with --resume, "
                         "or start a new one in another folder")


def _train_comparison(args, folder, overrides, new_job) -> int:
    """``train --compare heuristic``, or ``train RUN --resume`` of a comparison folder."""
    from .run.folder import COMPARE_FILE
    from .train.compare import run_compare
    if args.compare is None and not args.resume:
        raise UsageError(f"{folder.path} holds a comparison ({COMPARE_FILE}): continue it with "
                         f"'jcsaugment train {folder.path} --resume'")
    if args.restart:
        raise UsageError("--restart does not apply to a comparison: continue it with --resume, "
                         "or start a new one in another folder")
    return run_compare(folder, baseline=args.compare or "heuristic", seeds=args.seeds,
                       resume=args.resume, quiet=args.quiet, overrides=overrides,
                       new_job=new_job,
                       hold_lock_until_exit=getattr(args, "own_process", False))


def _cmd_predict(args) -> int:
    from .threads import apply_thread_policy
    apply_thread_policy()  # JCSAUGMENT_NUM_THREADS; OMP_WAIT_POLICY for what predict starts
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
    from .infer.progress import ProgressLine
    options = PredictOptions(tea=args.tea, z=args.z, step=args.step,
                             uncertainty=args.uncertainty, checkpoint=args.checkpoint,
                             device=args.device, overwrite=args.overwrite,
                             batch_windows=args.batch_windows, progress_file=True)
    # the window progress line (stderr, a terminal only) is cleared before any other line
    line = ProgressLine(enabled=False if args.quiet else None)

    def say(message):
        line.clear()
        print(message)
    # progress names the checkpoint used ("using best.pt (best, iteration 40)") and the TEA
    try:
        records = predict_cases(folder, images, args.out, options, progress=say,
                                window_progress=line)
    finally:
        line.clear()
    for r in records:
        print(f"wrote {r['prediction']}" + (f" and {r['uncertainty']}" if "uncertainty" in r
                                            else ""))
    return 0


def _cmd_policy(args) -> int:
    import os
    from .charts.policy_chart import draw_policy_file
    from .run.folder import RunFolder
    if args.gallery:
        return _policy_gallery(args)
    if args.run.endswith(".json") and not os.path.isdir(args.run):
        path, what = args.run, "the policy file"
    else:
        path, what = RunFolder(args.run).policy_path, "the run folder's policy"
    if not os.path.isfile(path):
        raise UsageError(f"{path} not found ({what}): give a run folder that has learned a "
                         f"policy, or a policy JSON file")
    with _writing("--out", args.out):
        draw_policy_file(path, args.out,
                         initial=None if args.initial == "none" else args.initial)
    print(f"wrote {args.out}")
    return 0


def _save_npz_atomically(path: str, arrays) -> None:
    """``numpy.savez_compressed`` through a temporary file in the same folder (a reader never
    sees half an archive). Plain arrays only: read back with ``allow_pickle=False``."""
    import os
    import tempfile

    import numpy as np
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gallery-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _policy_gallery(args) -> int:
    """``jcsaugment policy RUN --gallery IMAGE LABEL --out PNG``."""
    from .threads import apply_thread_policy
    apply_thread_policy()  # before torch: a busy machine must not stall its thread pool
    from .augment.gallery import load_gallery_policies, make_gallery
    from .charts.policy_gallery import draw_gallery
    from .io.volume import read_images, read_label
    _check_device(args.device)
    if args.tea_top < 0:
        raise UsageError("--tea-top must be 0 or more")
    if args.group:
        from .augment.tables import TRA_GROUPS
        names = [g.name for g in TRA_GROUPS] + ["tea"]
        unknown = [g for g in args.group if g.lower() not in names]
        if unknown:
            raise UsageError(f"--group {unknown[0]!r} is no gallery row; give one of "
                             f"{', '.join(names)}")
        if "tea" in [g.lower() for g in args.group] and args.tea_top == 0:
            raise UsageError("--group tea with --tea-top 0: there would be no TEA row")
    try:
        policies = load_gallery_policies(args.run, None if args.initial == "none"
                                         else args.initial)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    image = read_images([args.gallery[0]] + list(args.channel or []))
    label = read_label(args.gallery[1], reference=image)
    roi = None if not args.roi else read_label(args.roi, reference=image).array[0] > 0
    if not -image.array.shape[0] <= args.show_channel < image.array.shape[0]:
        raise UsageError(f"--show-channel {args.show_channel}: the case has "
                         f"{image.array.shape[0]} channel(s)")
    try:
        gallery = make_gallery(image.array, label.array, policies.tra, policies.tea,
                               policies.initial_tra, policies.initial_tea,
                               is_initial=policies.is_initial, title=policies.title,
                               patch_size=tuple(args.patch_size), tea_top=args.tea_top,
                               tea_min_probability=args.tea_min_probability, roi=roi,
                               seed=args.seed, device=args.device)
    except ValueError as e:  # no voxel to centre a patch on, a bad patch size
        raise UsageError(str(e)) from None
    for message in gallery.messages:
        print(f"note: {message}", file=sys.stderr)
    with _writing("--out", args.out):
        draw_gallery(gallery, args.out, channel=args.show_channel, groups=args.group)
    if args.arrays:
        from .augment.gallery import gallery_strips
        with _writing("--arrays", args.arrays):
            _save_npz_atomically(args.arrays, gallery_strips(gallery, args.group,
                                                             args.show_channel))
    print(f"wrote {args.out} ({len(gallery.tiles)} tiles: "
          f"{', '.join(p.name for p in gallery.patches)})")
    return 0


def _cmd_stop(args) -> int:
    """Ask the live worker of a run folder to stop.  With no live worker (no run.lock, or one
    left by a dead process) it is an error and nothing is written: a stop file would not stop
    anything (a starting worker clears an old one), so saying "asked" would be untrue."""
    import os
    from .run.control import live_worker
    from .run.folder import RunFolder
    folder = RunFolder(args.run_dir)
    if not os.path.lexists(folder.path):
        raise UsageError(f"{folder.path}: no such run folder; give the folder a run is "
                         f"training in")
    if not os.path.isdir(folder.path):
        raise UsageError(f"{folder.path} is a file, not a run folder")
    worker = live_worker(folder.path)
    if worker is None:
        raise UsageError(f"no worker is running in {folder.path} (no live run.lock), so there "
                         f"is nothing to stop; nothing was written")
    folder.request_stop(reason="jcsaugment stop")
    print(f"asked the worker (pid {worker.get('pid', '?')}) of {folder.path} to stop after its "
          f"current iteration")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    _check_device(args.device)
    run_demo(args.out, quick=args.quick, device=args.device)
    return 0


def _cmd_augment_demo(args) -> int:
    from .demo_augment import run_augment_demo
    run_augment_demo(args.out, seed=args.seed)
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, "(default: 0.5)", where argparse holds one;
    an option whose default is None (the job's value, or "not given") says so in its text."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool)
                or (not action.option_strings and action.nargs not in ("?", "*"))):
            return text
        shown = (" ".join(str(v) for v in default) if isinstance(default, (list, tuple))
                 else str(default))
        return f"{text} (default: {shown.replace('%', '%%')})"


def _job_help(text: str, setting: str) -> str:
    """Help for a train option that sets a job field: argparse's default is None (keep the
    job's value), so the job's own default is named, read from the job schema."""
    from .run.job_builder import TrainSettings
    return f"{text} (job default: {TrainSettings.job_default(setting)})".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    from .data.splits import DEFAULT_FOLD, NNUNET_SPLITS_FILE, SPLITS_FILE
    from .run.job import (BACKBONES, DEFAULT_TEA_TOP_Z, INITS, META_GRADS, MODES, OPTIMIZERS,
                          SPLITS, TEA_CHOICES, Job)
    top_z = ", ".join(f"{z} {bb}" for bb, z in DEFAULT_TEA_TOP_Z.items())
    split_shares = "/".join(f"{100 * v:g}" for v in Job().data.split_fractions.values())
    p = argparse.ArgumentParser(prog="jcsaugment", formatter_class=_HelpFormatter, description=(
        "Joint class-specific training- and test-time augmentation for 3D segmentation."))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=_HelpFormatter, description=kw.get("help"),
                              **kw)

    s = command("ops", help="print the TRA and TEA operation tables")
    s.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    s.set_defaults(func=_cmd_ops)

    s = command("preview", help="draw foreground/background patches under a TRA policy")
    s.add_argument("image", help="image volume (NIfTI, NRRD, MHA)")
    s.add_argument("label", help="label map on the image's grid")
    s.add_argument("--channel", action="append", metavar="FILE",
                   help="another image channel on the same grid (repeatable; default: none)")
    s.add_argument("--policy", default="nnunet",
                   help="nnunet, deepmedic, randaugment-s/m/l, none, or a policy JSON file")
    s.add_argument("--out", required=True, metavar="PNG", help="picture to write")
    s.add_argument("--samples", type=int, default=4, metavar="N",
                   help="augmented samples per patch")
    s.add_argument("--patch-size", type=int, nargs=3, default=(64, 64, 64), metavar=("D", "H", "W"),
                   help="patch size in voxels, z y x")
    s.add_argument("--seed", type=int, default=0, help="random seed of the centres and draws")
    s.add_argument("--roi", metavar="FILE",
                   help="mask for background centres, e.g. a brain mask (default: the whole "
                        "volume)")
    s.add_argument("--show-channel", type=int, default=0, metavar="C",
                   help="channel drawn in the grid (0-based index)")
    s.add_argument("--save-arrays", metavar="NPZ",
                   help="also save the patches as .npz (default: not saved)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    s.set_defaults(func=_cmd_preview)

    s = command("bench", help="benchmarks (side-by-side ratios with the peers, one run)")
    s.add_argument("what", choices=["augment", "meta", "infer"],
                   help="augment: TRA patches/s vs the peers; meta: s/iteration of joint "
                        "learning vs heuristic TRA; infer: one volume with TEA z = 1, 4, 8")
    from .bench.infer_bench import DEFAULT_SIZE, DEFAULT_STEP, DEFAULT_ZS
    s.add_argument("--shape", "--size", dest="size", type=_whole_numbers, nargs="+",
                   metavar="Z,Y,X",
                   help=f"infer: volume size in voxels, z y x, as 32,32,32 or 32 32 32 "
                        f"(default: {','.join(map(str, DEFAULT_SIZE))}: about an hour on 2 "
                        f"CPU cores)")
    s.add_argument("--zs", type=_whole_numbers, default=",".join(map(str, DEFAULT_ZS)),
                   metavar="Z,Z,...",
                   help="infer: our TEA copies to time, e.g. 1,8 (z: the first z of nnU-Net's "
                        "8 mirror ops; 8 is the U-Net's heuristic TEA)")
    s.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="infer: rounds; the contestants take turns in each, the median is "
                        "kept")
    s.add_argument("--step", type=float, default=DEFAULT_STEP, metavar="FRACTION",
                   help="infer: sliding-window step, a fraction of the window")
    s.add_argument("--batch-windows", type=int, metavar="N",
                   help="infer: our windows per batch (default: from the device, as predict "
                        "does)")
    s.add_argument("--base-features", type=int, default=10, metavar="N",
                   help="infer: U-Net channels at the first stage")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    s.add_argument("--batch", type=int, metavar="N",
                   help="patches per batch (default: augment 10, meta 4)")
    s.add_argument("--patch", type=int, metavar="EDGE",
                   help="cubic patch edge in voxels (default: augment 64, meta 48; infer: the "
                        "window, 64)")
    s.add_argument("--repeats", type=int, metavar="N",
                   help="timed batches per pipeline (default: augment 5) or blocks of 10 "
                        "iterations (default: meta 3)")
    s.add_argument("--no-peers", action="store_true",
                   help="augment: time our cascade only; infer: ours only, without nnU-Net's "
                        "predictor (default: every installed peer too)")
    s.add_argument("--json", action="store_true", help="print the result as JSON, no table")
    s.set_defaults(func=_cmd_bench)

    s = command("train", help="train a network while learning its augmentation",
                epilog="An option left out keeps the job's value: for a new job (--dataset) "
                       "the job default shown; for RUN_DIR what its job.json says.")
    s.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                   help="run folder holding job.json (or give --dataset and --out)")
    s.add_argument("--dataset", metavar="DIR",
                   help="nnU-Net v2 raw or Decathlon folder: a new job on it in --out")
    s.add_argument("--out", metavar="RUN_DIR", help="run folder to create with --dataset")
    s.add_argument("--splits", metavar="FILE",
                   help=f"splits file: {{\"train\": [ids], \"validation\": [ids], \"test\": "
                        f"[ids]}}, or nnU-Net's list of folds (with --fold). Default: "
                        f"DIR/{SPLITS_FILE}, else DIR/{NNUNET_SPLITS_FILE} (whose folds have no "
                        f"test split: test is empty), else drawn at random ({split_shares} %%)")
    s.add_argument("--fold", type=int, metavar="N",
                   help=f"fold of nnU-Net's {NNUNET_SPLITS_FILE} (default: {DEFAULT_FOLD})")
    s.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    s.add_argument("--restart", action="store_true",
                   help="start a run folder that holds a checkpoint again from iteration 0 "
                        "(its checkpoints are kept in checkpoints/before-restart-TIME/)")
    s.add_argument("--quiet", action="store_true", help="no progress bar (for machines)")
    s.add_argument("--backbone", choices=BACKBONES, help=_job_help("network", "backbone"))
    s.add_argument("--mode", choices=MODES,
                   help=_job_help("augmentation: none; a fixed heuristic or RandAugment policy; "
                                  "learned TRA (shared or class-specific); joint TRA + TEA; or "
                                  "TEA only for a trained model", "mode"))
    s.add_argument("--init", choices=INITS,
                   help=_job_help("heuristic TRA policy that learning starts from", "init"))
    s.add_argument("--epochs", type=int, metavar="N",
                   help=_job_help("epochs to train; the learning rates decay over them",
                                  "epochs"))
    s.add_argument("--iterations-per-epoch", type=int, metavar="N",
                   help=_job_help("training steps (batches) per epoch", "iterations_per_epoch"))
    s.add_argument("--patch-size", type=int, nargs=3, metavar=("D", "H", "W"),
                   help=_job_help("training patch in voxels, z y x", "patch_size"))
    s.add_argument("--base-features", type=int, metavar="N",
                   help=_job_help("network channels at the first stage", "base_features"))
    s.add_argument("--batch-size", type=int, metavar="N",
                   help=_job_help("training patches per step", "batch_size"))
    s.add_argument("--val-batch-size", type=int, metavar="N",
                   help=_job_help("validation patches per policy update", "val_batch_size"))
    s.add_argument("--tea-copies", type=int, metavar="N",
                   help=_job_help("TEA draws per validation patch when learning TEA",
                                  "tea_copies"))
    s.add_argument("--policy-every", type=int, metavar="N",
                   help=_job_help("training steps between policy updates", "policy_every"))
    s.add_argument("--explore", type=float, metavar="SHARE",
                   help=_job_help("exploration floor, not the paper's (0 = off): this share of "
                                  "the TRA and TEA draws that learn a policy is drawn uniformly, "
                                  "so rare ops are tried within a short budget; the policies "
                                  "themselves are unchanged", "explore"))
    s.add_argument("--meta-grad", choices=META_GRADS,
                   help=_job_help("how the policy gradient goes through the network's step",
                                  "meta_grad"))
    s.add_argument("--optimizer", choices=OPTIMIZERS,
                   help=_job_help("the network's optimiser: sgd (Nesterov momentum, as nnU-Net) "
                                  "or adam (fewer steps to a usable model, for short budgets)",
                                  "optimizer"))
    s.add_argument("--lr", type=float, metavar="RATE",
                   help=_job_help("the network's initial learning rate per step (decays as "
                                  "poly over the epochs)", "lr"))
    s.add_argument("--momentum", type=float, metavar="M",
                   help=_job_help("SGD momentum, in [0, 1)", "momentum"))
    s.add_argument("--nesterov", action=argparse.BooleanOptionalAction,
                   help=_job_help("Nesterov momentum for SGD", "nesterov"))
    s.add_argument("--weight-decay", type=float, metavar="W",
                   help=_job_help("the network's L2 weight decay", "weight_decay"))
    s.add_argument("--poly-power", type=float, metavar="P",
                   help=_job_help("learning-rate decay: every rate is multiplied by "
                                  "(1 - epoch/epochs)^P", "poly_power"))
    s.add_argument("--policy-lr", type=float, metavar="RATE",
                   help=_job_help("the TRA policy's Adam learning rate", "policy_lr"))
    s.add_argument("--tea-lr", type=float, metavar="RATE",
                   help=_job_help("the TEA policy's Adam learning rate", "tea_lr"))
    s.add_argument("--pretrained", metavar="CHECKPOINT",
                   help=_job_help("checkpoint of a trained model: the frozen model of mode "
                                  "tea-only; in any other mode the network's starting weights "
                                  "(fine-tuning; the policies start afresh)",
                                  "pretrained"))
    s.add_argument("--device", help=_job_help("auto, cpu, cuda or cuda:N", "device"))
    s.add_argument("--seed", type=int, help=_job_help("random seed", "seed"))
    s.add_argument("--time-budget", type=float, metavar="MINUTES", dest="time_budget_minutes",
                   help=_job_help("stop (with a checkpoint) after this many minutes",
                                  "time_budget_minutes"))
    s.add_argument("--compare", metavar="METHOD",
                   help="heuristic: also train heuristic TRA on the same cases, splits, "
                        "backbone, seed and budget, one run after the other, segment the test "
                        "split with both (each with its TEA and without), and write "
                        "comparison.json/.md with per-case metrics and the paired difference "
                        "(default: no comparison, one run)")
    s.add_argument("--seeds", type=int, metavar="N",
                   help="with --compare: train N pairs, seeds SEED, SEED+1, ...; on --resume a "
                        "larger N adds pairs (default: 1)")
    s.set_defaults(func=_cmd_train)

    s = command("predict", help="segment images with a trained run and TEA")
    s.add_argument("--run", required=True, metavar="RUN_DIR", help="the run folder")
    s.add_argument("--image", action="append", metavar="FILE[,FILE...]",
                   help="an image to segment (channels of one case joined by commas); repeat "
                        "for more cases")
    s.add_argument("--split", choices=SPLITS,
                   help="segment every case of this split of the run's dataset")
    s.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (one label map per case)")
    s.add_argument("--tea", choices=TEA_CHOICES,
                   help="TEA at inference (default: the job's inference.tea)")
    s.add_argument("--z", type=int, metavar="N",
                   help=f"learned TEA: how many top ops (default: the job's "
                        f"inference.tea_top_z, {top_z})")
    s.add_argument("--step", type=float, metavar="FRACTION",
                   help=f"sliding-window step, a fraction of the patch (default: the job's "
                        f"inference.step, {Job().inference.step:g})")
    s.add_argument("--overwrite", action="store_true",
                   help="replace label maps that already exist in --out")
    s.add_argument("--uncertainty", action="store_true",
                   help="also write a voxel-wise TEA disagreement map")
    s.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="best: the best validation Dice; last: the latest checkpoint")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--batch-windows", type=int, metavar="N",
                   help="sliding windows per network call (default: from the device: "
                        "2 network inputs per call on a CPU, half the free memory on a GPU)")
    s.add_argument("--quiet", action="store_true",
                   help="no progress line (default: one line with windows done and ETA, on "
                        "a terminal); DIR/predict_progress.json is kept either way")
    s.set_defaults(func=_cmd_predict)

    s = command("policy", help="draw a run's learned policies (TRA pies, TEA bars)")
    s.add_argument("run", help="run folder (reads policy.json) or a policy JSON file")
    s.add_argument("--out", required=True, metavar="PNG", help="picture to write")
    s.add_argument("--initial", default="nnunet", choices=["nnunet", "deepmedic", "none"],
                   help="the heuristic to compare with (the run's own when it says)")
    s.add_argument("--gallery", nargs=2, metavar=("IMAGE", "LABEL"),
                   help="draw the policy gallery of this case instead: a foreground and a "
                        "background patch under every TRA option and the top TEA ops, with "
                        "their probabilities (default: the pies and bars)")
    s.add_argument("--channel", action="append", metavar="FILE",
                   help="gallery: another image channel on the same grid (repeatable; "
                        "default: none)")
    s.add_argument("--roi", metavar="FILE",
                   help="gallery: mask for the background centre, e.g. a brain mask "
                        "(default: the whole volume)")
    s.add_argument("--patch-size", type=int, nargs=3, default=(64, 64, 64),
                   metavar=("D", "H", "W"), help="gallery: patch size in voxels, z y x")
    s.add_argument("--tea-top", type=int, default=8, metavar="N",
                   help="gallery: tiles for the N most probable TEA ops (0: none)")
    s.add_argument("--tea-min-probability", type=float, default=0.0, metavar="P",
                   help="gallery: only TEA ops more probable than P")
    s.add_argument("--show-channel", type=int, default=0, metavar="C",
                   help="gallery: channel drawn (0-based index)")
    s.add_argument("--group", action="append", metavar="NAME",
                   help="gallery: draw only this row: a TRA group (scaling, gamma, "
                        "mirror_axis0, ...) or 'tea' (repeatable; default: every row)")
    s.add_argument("--arrays", metavar="NPZ",
                   help="gallery: also write the drawn rows as volumes to scroll through "
                        "(per patch: the original, then each option, side by side along x; "
                        "labels and captions beside them; default: not written)")
    s.add_argument("--seed", type=int, default=0,
                   help="gallery: random seed of the background centre and the noise")
    s.add_argument("--device", default="cpu", help="gallery: cpu, cuda or cuda:N")
    s.set_defaults(func=_cmd_policy)

    from .evaluate.evaluate_folders import add_evaluate_arguments, run_evaluate_from_args
    s = command("evaluate", help="DSC, sensitivity, precision, HD95 of label maps")
    add_evaluate_arguments(s)
    s.set_defaults(func=run_evaluate_from_args)

    s = command("stop", help="ask a running worker to stop (it checkpoints first)")
    s.add_argument("run_dir", metavar="RUN_DIR", help="the run folder")
    s.set_defaults(func=_cmd_stop)

    from .synth import add_synth_arguments, run_synth_from_args
    s = command("synth", help="write the synthetic two-site dataset (nnU-Net layout)")
    add_synth_arguments(s)
    s.set_defaults(func=run_synth_from_args)

    s = command("demo", help="the main job: heuristic vs joint learning on the "
                                    "synthetic dataset, with a report")
    s.add_argument("--out", default="jcsaugment-demo", metavar="DIR", help="report folder")
    s.add_argument("--quick", action="store_true",
                   help="one seed, a short budget (~2 min; default: the full demo)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.set_defaults(func=_cmd_demo)

    s = command("augment-demo", help="preview and policy pictures on a synthetic case")
    s.add_argument("--out", default="jcsaugment-demo", metavar="DIR", help="output folder")
    s.add_argument("--seed", type=int, default=0, help="random seed of the case and draws")
    s.set_defaults(func=_cmd_augment_demo)
    return p


def _user_error_types():
    """The exceptions that mean "the input is wrong": said in one line, exit 2."""
    from .data.dataset import DataError
    from .evaluate.evaluate_folders import EvaluationError
    from .infer.predict import PredictionError
    from .io.volume import VolumeError
    from .policy.policy_json import PolicyFileError
    from .run.checkpoint import CheckpointError
    from .run.control import RunFolderError, RunLockError
    from .run.job import JobError
    return (UsageError, VolumeError, PolicyFileError, EvaluationError, PredictionError,
            RunFolderError, RunLockError, CheckpointError, JobError, DataError)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Optional[List[str]] = None, own_process: bool = False) -> int:
    """Run one command; returns the exit status.  A user error (bad file, option, policy, run
    folder, full disk) is one line ``jcsaugment CMD: error: ...`` on stderr and status 2; any
    other failure is one line and status 1.  ``--debug`` (before the command) shows the
    traceback instead. ``own_process``: this process ends when the command returns (the
    ``jcsaugment`` script, ``python -m JCSAugmentLib``): ``train`` then keeps its run folder's
    lock until the process has exited."""
    # before build_parser(): it imports torch, and libgomp reads OMP_WAIT_POLICY only then
    from .threads import apply_thread_policy
    try:
        apply_thread_policy()
    except ValueError as e:  # a bad JCSAUGMENT_NUM_THREADS
        print(f"jcsaugment: error: {e}", file=sys.stderr)
        return 2
    parser = build_parser()
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (for bug reports)")
    args = parser.parse_args(argv)
    args.own_process = own_process
    if args.debug:
        return args.func(args)
    user_errors = _user_error_types()
    what = f"jcsaugment {args.command}: error:"
    try:
        return args.func(args)
    except user_errors as e:
        print(f"{what} {_one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except OSError as e:  # the file system said no: a full disk, a read-only folder
        from .run.control import describe_os_error
        print(f"{what} {_one_line(describe_os_error(e))}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{what} out of memory; use smaller inputs, or a machine with more memory",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{what} interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line; --debug shows where
        print(f"{what} internal error ({type(e).__name__}: {_one_line(e)[:300]}); run "
              f"'jcsaugment --debug {args.command} ...' for the traceback", file=sys.stderr)
        return 1


def console_main() -> int:
    """The ``jcsaugment`` console script: :func:`main` in a process of its own."""
    return main(own_process=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
