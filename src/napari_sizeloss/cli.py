"""The ``napari-sizeloss`` command line.

A stable contract for scripts and other tools::

    napari-sizeloss phantom OUT.nii.gz [--gt GT.nii.gz] [--seed N]
    napari-sizeloss bounds GT.nii.gz --label 3
    napari-sizeloss train IMAGE.nii.gz --seeds SEEDS.nii.gz --bounds LOWER UPPER
            [--unit px|mm2] [--absent Z[:T] ...] [--size-weight W]
            [--penalty quadratic|log-barrier] [--steps N | --minutes M]
            [--device auto|cpu|cuda|mps] [--init CKPT] --model OUT.ckpt
            [--pred PRED.nii.gz]
    napari-sizeloss predict IMAGE.nii.gz --model CKPT --out MASK.nii.gz

plus ``clicks`` (simulate a user's dots from a label volume), ``dice`` (score
a mask), ``demo`` (the whole job on the embedded phantom) and the
``reproduce`` and ``bench`` commands when their modules are installed.

Errors exit with status 2 and one line ``error: ...`` on stderr, and leave no
output file behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .config import DEFAULT_TTA, TTA_MODES
from .demo import TAG_STRATEGIES

EXIT_ERROR = 2


class CLIError(ValueError):
    """A user error the CLI reports in one line."""


# --------------------------------------------------------------------- helpers
def _check_output(path: str | Path, *, inputs=(), suffixes=None, what="output") -> Path:
    """Fail early (before any training) when ``path`` cannot be written.

    Checks the directory exists and accepts a new file (by creating and
    deleting a temporary file), that ``path`` is not a directory, has an
    allowed suffix and is none of the ``inputs``.
    """
    path = Path(path)
    if suffixes and not any(path.name.endswith(s) for s in suffixes):
        raise CLIError(f"{what} {path} must end with {' or '.join(suffixes)}")
    if path.is_dir():
        raise CLIError(f"cannot write {what} {path}: it is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"cannot write {what} {path}: directory {parent} does not exist")
    for other in inputs:
        other = Path(other)
        if other.exists() and path.exists() and os.path.samefile(other, path):
            raise CLIError(f"refusing to overwrite the input {other} with the {what}")
        if path.resolve() == other.resolve():
            raise CLIError(f"refusing to overwrite the input {other} with the {what}")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".napari-sizeloss-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CLIError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    return path


def _parse_absent(values: list[str], shape_zt: tuple[int, int]) -> np.ndarray:
    """``["3", "5:0"]`` -> bool (Z, T): slice 3 in all frames, slice 5 of frame 0."""
    Z, T = shape_zt
    absent = np.zeros((Z, T), dtype=bool)
    for value in values or []:
        try:
            if ":" in value:
                z_str, t_str = value.split(":", 1)
                z, t = int(z_str), int(t_str)
            else:
                z, t = int(value), None
        except ValueError:
            raise CLIError(f"--absent {value!r}: expected Z or Z:T (integers)") from None
        if not 0 <= z < Z:
            raise CLIError(f"--absent {value}: slice {z} is outside 0..{Z - 1}")
        if t is None:
            absent[z, :] = True
        else:
            if not 0 <= t < T:
                raise CLIError(f"--absent {value}: frame {t} is outside 0..{T - 1}")
            absent[z, t] = True
    return absent


def _shape_zt(shape: tuple[int, ...]) -> tuple[int, int]:
    return (shape[2] if len(shape) > 2 else 1, shape[3] if len(shape) > 3 else 1)


def _progress_printer(total: int | None, stream=None):
    """A callback printing progress: a tqdm bar on a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="step", file=stream, dynamic_ncols=True)

        def on_event(event):
            if event.kind.value == "done":
                bar.close()
                return
            bar.update(1)
            bar.set_postfix(ce=f"{event.ce:.3f}", size=f"{event.size:.4f}", img_s=f"{event.images_per_s:.0f}")

        return on_event

    every = max(1, (total or 200) // 20)

    def on_event(event):
        if event.kind.value == "done":
            dice = f"  dice {event.dice:.4f}" if event.dice is not None else ""
            print(
                f"done: {event.step} steps in {event.elapsed_s:.1f} s "
                f"({event.images_per_s:.1f} images/s){dice}{'  (stopped)' if event.stopped else ''}",
                file=stream,
                flush=True,
            )
            return
        if event.step % every == 0 or event.step == 1:
            eta = f"  eta {event.eta_s:.0f}s" if event.eta_s is not None else ""
            total_s = f"/{event.total_steps}" if event.total_steps else ""
            dice = f"  dice {event.dice:.4f}" if event.dice is not None else ""
            print(
                f"step {event.step}{total_s}  loss {event.loss:.4f}  ce {event.ce:.4f}  "
                f"size {event.size:.4f}  lr {event.lr:.2g}  {event.images_per_s:.1f} img/s{eta}{dice}",
                file=stream,
                flush=True,
            )

    return on_event


# -------------------------------------------------------------------- commands
def cmd_phantom(args) -> int:
    from .phantom import make_cine_phantom
    from .nifti import atomic_save

    out = _check_output(args.out, suffixes=(".nii", ".nii.gz"), what="image")
    gt = _check_output(args.gt, inputs=[out], suffixes=(".nii", ".nii.gz"), what="ground truth") if args.gt else None
    kwargs = {"seed": args.seed}
    if args.shape:
        kwargs["shape"] = tuple(args.shape)
    ph = make_cine_phantom(**kwargs)
    image_img, labels_img = ph.to_nifti()
    atomic_save(image_img, out)
    print(f"wrote {out}: shape {ph.image.shape} (X, Y, Z, T), spacing {ph.spacing} mm")
    if gt:
        atomic_save(labels_img, gt)
        print(f"wrote {gt}: labels 1 RV, 2 myocardium, 3 LV cavity; ED frame {ph.ed_frame}, ES frame {ph.es_frame}")
    return 0


def cmd_bounds(args) -> int:
    from .bounds import bounds_from_annotation
    from .nifti import load_nifti

    vol = load_nifti(args.gt, dtype=None)
    labels = np.asarray(vol.data)
    if not np.allclose(labels, np.round(labels)):
        raise CLIError(f"{args.gt} is not a label volume (non-integer values)")
    bounds = bounds_from_annotation(
        labels.astype(np.int64), args.label, lower_factor=args.lower_factor, upper_factor=args.upper_factor
    )
    mm2 = bounds.to_mm2(vol.spacing[:2])
    print(f"lower {bounds.lower:.1f} px  {mm2.lower:.1f} mm2")
    print(f"upper {bounds.upper:.1f} px  {mm2.upper:.1f} mm2")
    print(f"(paper recipe: {args.lower_factor} x smallest and {args.upper_factor} x largest non-empty slice of label {args.label})")
    return 0


def cmd_clicks(args) -> int:
    from .nifti import load_nifti, save_mask
    from .weak_labels import click_seeds

    out = _check_output(args.out, inputs=[args.gt], suffixes=(".nii", ".nii.gz"), what="seeds")
    vol = load_nifti(args.gt, dtype=None)
    mask = np.asarray(vol.data) == args.label
    if not mask.any():
        raise CLIError(f"label {args.label} does not occur in {args.gt}")
    seeds = click_seeds(
        mask, k=args.k, radius=args.radius, slices=args.slices, frames=args.frames,
        rng=args.seed, background_k=args.background, background_margin=args.background_margin,
        background_within=args.background_within,
    )
    save_mask(out, seeds, vol)
    n_slices = int((seeds == 1).any(axis=(0, 1)).sum())
    print(f"wrote {out}: target dots on {n_slices} slice(s)")
    return 0


def _load_image_and_seeds(image_path, seeds_path):
    from .nifti import load_nifti
    from .weak_labels import validate_seeds

    image = load_nifti(image_path)
    if seeds_path is None:
        return image, None
    seeds = load_nifti(seeds_path, dtype=None)
    data = np.asarray(seeds.data)
    if data.shape != image.data.shape:
        raise CLIError(f"seeds {seeds_path} have shape {data.shape}, image {image_path} has {image.data.shape}")
    if not np.allclose(data, np.round(data)):
        raise CLIError(f"seeds {seeds_path} must hold integer codes 0, 1, 2")
    data = np.round(data).astype(np.int64)
    validate_seeds(data, image.data.shape)
    return image, data.astype(np.uint8)



def _add_tta(p, what: str, paper: bool = False) -> None:
    p.add_argument("--tta", choices=TTA_MODES, default=None,
                   help=f"test-time views of {what}: flips (each slice averaged over its 4 flips; the "
                        f"default{', none with --paper' if paper else ''}), dihedral (its 8 flips and quarter "
                        "turns), or none (one pass per slice: 4x faster than flips)")


def cmd_train(args) -> int:
    from .bounds import SizeBounds
    from .device import select_device
    from .nifti import save_mask
    from .trainer import TrainConfig, train

    model_path = _check_output(args.model, inputs=[args.image, args.seeds], what="model")
    pred_path = None
    if args.pred:
        pred_path = _check_output(
            args.pred, inputs=[args.image, args.seeds, model_path], suffixes=(".nii", ".nii.gz"), what="prediction"
        )
    device = select_device(args.device)  # fail before loading anything big
    if args.compile:
        from .compiled import require_compile

        require_compile(device)
    image, seeds = _load_image_and_seeds(args.image, args.seeds)
    bounds = SizeBounds(args.bounds[0], args.bounds[1], unit=args.unit)
    absent = _parse_absent(args.absent, _shape_zt(image.data.shape))
    gt = None
    if args.gt:
        from .nifti import load_nifti

        gt_vol = load_nifti(args.gt, dtype=None)
        if gt_vol.data.shape != image.data.shape:
            raise CLIError(f"ground truth {args.gt} has shape {gt_vol.data.shape}, image has {image.data.shape}")
        gt = np.asarray(gt_vol.data) == args.label
    cfg_kwargs = dict(
        size_weight=args.size_weight, penalty=args.penalty, device=args.device, seed=args.seed,
        threads=args.threads, preview_every=0, compile=args.compile,
    )
    if args.all_regions:
        cfg_kwargs["keep_connected"] = False
    if args.tta is not None:
        cfg_kwargs["tta"] = args.tta
    if args.minutes is not None:
        cfg_kwargs.update(steps=None, minutes=args.minutes)
    else:
        cfg_kwargs.update(steps=args.steps)
    if args.ema_decay is not None:
        if not 0 <= args.ema_decay < 1:
            raise CLIError(f"--ema-decay must be in [0, 1) (0: off, the default), got {args.ema_decay}")
        cfg_kwargs["ema_decay"] = args.ema_decay or None
    if args.resume_lr_factor is not None:
        if not args.init:
            raise CLIError("--resume-lr-factor applies to a run that continues a checkpoint: add --init CKPT")
        cfg_kwargs["resume_lr_factor"] = args.resume_lr_factor
    for name in ("lr", "batch_size", "crop"):
        value = getattr(args, name)
        if value is not None:
            cfg_kwargs[name] = value if not (name == "crop" and value == 0) else None
    if args.paper:
        config = TrainConfig.paper(**cfg_kwargs)
    else:
        config = TrainConfig.interactive(**cfg_kwargs)
    if args.compile:
        print("compiling the training step first (about 100 s on 2 CPU cores; seconds when cached)", flush=True)
    session = train(
        image.data, seeds, bounds, spacing=image.spacing, absent=absent, config=config,
        checkpoint=args.init, ground_truth=gt, callback=_progress_printer(config.steps),
    )
    session.save(model_path)
    print(f"wrote {model_path}")
    if pred_path:
        mask, left_out, n_left_out = session.predict_split()
        save_mask(pred_path, mask, image)
        print(f"wrote {pred_path}{_left_out(n_left_out, left_out, '--all-regions keeps them')}")
    return 0


def _left_out(regions: int, left_out: np.ndarray, how_to_keep: str) -> str:
    """``" (left out 2 predicted regions, 352 voxels, that no target dot touches; ...)"``, or ``""`` for none."""
    if not regions:
        return ""
    return (f" (left out {regions} predicted region{'s' if regions != 1 else ''}, "
            f"{int(np.count_nonzero(left_out))} voxels, that no target dot touches; {how_to_keep})")


def cmd_predict(args) -> int:
    from .nifti import load_nifti, save_mask
    from .trainer import Predictor
    from .weak_labels import SEED_TARGET

    inputs = [args.image, args.model] + ([args.seeds] if args.seeds else [])
    out = _check_output(args.out, inputs=inputs, suffixes=(".nii", ".nii.gz"), what="mask")
    predictor = Predictor.from_checkpoint(args.model, device=args.device, tta=args.tta or DEFAULT_TTA)
    if args.seeds:
        image, seeds = _load_image_and_seeds(args.image, args.seeds)
    else:
        image, seeds = load_nifti(args.image), None
    anchors = None if seeds is None else seeds == SEED_TARGET
    if anchors is not None and not anchors.any():
        raise CLIError(f"seeds {args.seeds} hold no target dot (code 1) to keep regions connected to")
    mask = predictor.predict(image.data)
    kept = ""
    if anchors is not None:
        from .connectivity import split_by_anchors

        connected, left_out, n_left_out = split_by_anchors(mask, anchors)
        mask = connected.astype(np.uint8)
        kept = " (regions connected to a target dot)" + _left_out(n_left_out, left_out, "without --seeds every "
                                                                   "region is kept")
    save_mask(out, mask, image)
    print(f"wrote {out}: {int(mask.sum())} voxels in the target{kept}")
    return 0


def cmd_dice(args) -> int:
    from .metrics import dice_2d, dice_3d
    from .nifti import load_nifti

    pred = np.asarray(load_nifti(args.pred, dtype=None).data)
    gt = np.asarray(load_nifti(args.gt, dtype=None).data)
    if pred.shape != gt.shape:
        raise CLIError(f"{args.pred} has shape {pred.shape}, {args.gt} has {gt.shape}")
    p = pred == args.pred_label if args.pred_label is not None else pred > 0
    g = gt == args.label
    d3 = np.atleast_1d(dice_3d(p, g))
    d2 = dice_2d(p, g)
    print(f"3D Dice (mean over {d3.size} frame(s)): {d3.mean():.4f}  (min {d3.min():.4f}, max {d3.max():.4f})")
    print(f"2D Dice (mean over slices): {np.mean(d2):.4f}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


# --------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="napari-sizeloss",
        description="Weakly supervised cine MR segmentation with size constraints (Kervadec et al.).",
    )
    parser.add_argument("--version", action="version", version=f"napari-sizeloss {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("phantom", help="write a synthetic cine MR phantom (and its ground truth)")
    p.add_argument("out", metavar="OUT.nii.gz")
    p.add_argument("--gt", metavar="GT.nii.gz", help="also write the labels (1 RV, 2 myocardium, 3 LV cavity)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=4, metavar=("X", "Y", "Z", "T"), help="volume shape")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("bounds", help="size bounds from one annotated subject (the paper's recipe)")
    p.add_argument("gt", metavar="GT.nii.gz")
    p.add_argument("--label", type=int, required=True, help="label value of the target (ACDC LV cavity: 3)")
    p.add_argument("--lower-factor", type=float, default=1.1)
    p.add_argument("--upper-factor", type=float, default=0.9)
    p.set_defaults(func=cmd_bounds)

    p = sub.add_parser("clicks", help="simulate a user's dots from a label volume")
    p.add_argument("gt", metavar="GT.nii.gz")
    p.add_argument("--out", required=True, metavar="SEEDS.nii.gz")
    p.add_argument("--label", type=int, default=3)
    p.add_argument("--k", type=int, default=3, help="dots per slice")
    p.add_argument("--radius", type=int, default=1, help="dot radius in pixels")
    p.add_argument("--slices", type=int, nargs="+", help="slice indices (default: all with the target)")
    p.add_argument("--frames", type=int, nargs="+", help="frame indices (default: all)")
    p.add_argument("--background", type=int, default=0, help="background dots per slice")
    p.add_argument("--background-margin", type=int, default=3, metavar="PX",
                   help="background dots lie more than PX from the target (default 3)")
    p.add_argument("--background-within", type=float, metavar="PX",
                   help="...and at most PX from it: on the tissue around the target, where a user clicks")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_clicks)

    p = sub.add_parser("train", help="fine-tune ENet on one volume from dots and size bounds")
    p.add_argument("image", metavar="IMAGE.nii.gz")
    p.add_argument("--seeds", required=True, metavar="SEEDS.nii.gz", help="0 none, 1 target dot, 2 background dot")
    p.add_argument("--bounds", required=True, type=float, nargs=2, metavar=("LOWER", "UPPER"))
    p.add_argument("--unit", choices=("px", "mm2"), default="px", help="unit of --bounds (per slice)")
    p.add_argument("--absent", nargs="+", default=[], metavar="Z[:T]", help="slices (of all frames, or of frame T) without the target")
    p.add_argument("--size-weight", type=float, default=1e-2)
    p.add_argument("--penalty", choices=("quadratic", "log-barrier"), default="quadratic")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=300)
    budget.add_argument("--minutes", type=float)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--init", metavar="CKPT", help="start from this checkpoint's weights")
    p.add_argument("--model", required=True, metavar="OUT.ckpt")
    p.add_argument("--pred", metavar="PRED.nii.gz", help="also write the predicted mask")
    p.add_argument("--all-regions", action="store_true",
                   help="--pred keeps every region the network predicts, also those no target dot touches "
                        "(default: only regions connected to a target dot; --paper keeps every region)")
    p.add_argument("--lr", type=float)
    p.add_argument("--resume-lr-factor", type=float, metavar="F",
                   help="with --init: continue the checkpoint's weights at --lr x F (default 0.5; --paper: 1); "
                        "lower refines more gently")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", type=int, help="smallest side (px) of the region around the dots; 0: whole slices")
    p.add_argument("--paper", action="store_true", help="the paper's protocol (batch 1, whole slices, lr halved every 100 epochs)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--ema-decay", type=float, metavar="D",
                   help="predict and save a moving average of the weights with this decay per step "
                        "(0.95: about the last 20 steps) instead of the last step's weights (default: off)")
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile: 1.5-2x faster steps after a first compile "
                        "(about 100 s on 2 CPU cores, seconds when cached); for long runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gt", metavar="GT.nii.gz", help="ground truth for a validation Dice at the end")
    p.add_argument("--label", type=int, default=3, help="target label in --gt")
    _add_tta(p, "--pred and the validation Dice", paper=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment a volume with a trained model")
    p.add_argument("image", metavar="IMAGE.nii.gz")
    p.add_argument("--model", required=True, metavar="CKPT")
    p.add_argument("--out", required=True, metavar="MASK.nii.gz")
    p.add_argument("--seeds", metavar="SEEDS.nii.gz",
                   help="keep only the predicted regions connected to a target dot (code 1) of these seeds "
                        "(default: every region)")
    p.add_argument("--device", default="auto")
    _add_tta(p, "the prediction")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("dice", help="Dice of a mask against a label volume")
    p.add_argument("pred", metavar="PRED.nii.gz")
    p.add_argument("gt", metavar="GT.nii.gz")
    p.add_argument("--label", type=int, default=3, help="target label in GT")
    p.add_argument("--pred-label", type=int, help="label in PRED (default: any non-zero)")
    p.set_defaults(func=cmd_dice)

    p = sub.add_parser("demo", help="the whole job on the embedded phantom: clicks, bounds, train, score")
    p.add_argument("--out", metavar="DIR", help="also write image, ground truth, seeds, prediction and model here")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--compare", action="store_true", help="also train without the size penalty (same budget)")
    p.add_argument("--cases", type=int, default=1, metavar="N",
                   help="run N demo cases (phantom, dots and training seed: --seed, --seed+1, ...) and print "
                        "the range, median and count at 0.85 or more (about a minute per case and training; "
                        "--out then writes DIR/seed-K)")
    p.add_argument("--tags", choices=TAG_STRATEGIES, default="none",
                   help="tag target-absent slices as a user would: none (default), on the clicked frames "
                        "(clicked-frames), or every slice-frame without the target (every-frame, as the paper)")
    _add_tta(p, "the prediction scored")
    p.set_defaults(func=cmd_demo)

    for module in ("reproduce", "bench"):
        try:
            mod = __import__(f"napari_sizeloss.{module}", fromlist=["add_parser"])
        except ImportError:
            continue
        adder = getattr(mod, f"add_{module}_parser", None)
        if adder is not None:
            adder(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Our own warnings as one ``warning: ...`` line; others as Python formats them."""
    if category.__module__.startswith("napari_sizeloss"):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
