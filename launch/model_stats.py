"""Print one JSON line with a model's parameter count (millions) and forward GFLOPs (multiply-adds,
billions, the paper's convention). Models are built on the meta device, so ViT-H is instant.

    python launch/model_stats.py --model vit_base --num_frames 16 --img_size 224 --num_classes 174
    python launch/model_stats.py --model vit_base --pretrain --mask_ratio 0.9
    python launch/model_stats.py --model vit_base --pretrain --mask_ratio 0.9 --decoder_ratio 0.5
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from motionmae_ds.models import (
    MASK_KINDS,
    MODEL_SIZES,
    build_classifier,
    build_pretrain_model,
    classifier_macs,
    pretrain_macs,
)
from motionmae_ds.models.masking import DECODER_HEADS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_base", help=f"one of {', '.join(MODEL_SIZES)}")
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--img_size", type=int, default=224)
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--tubelet_size", type=int, default=2)
    p.add_argument("--num_classes", type=int, default=174)
    p.add_argument("--pretrain", action="store_true", help="the pretraining model instead of the classifier")
    p.add_argument("--mask_ratio", type=float, default=0.9)
    p.add_argument("--mask_kind", default="random", choices=MASK_KINDS)
    p.add_argument("--decoder_ratio", type=float, default=0.0,
                   help="decoder masking (masking.decoder_ratio): 0 (off), 0.25, 0.5 or 0.75")
    p.add_argument("--decoder_heads", default="shared", choices=DECODER_HEADS)
    p.add_argument("--decoder_mode", default="divide", choices=("divide", "shared"))
    p.add_argument("--target", default="frame_motion", choices=("frame", "motion", "frame_motion"))
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    common = dict(name=args.model, num_frames=args.num_frames, img_size=args.img_size,
                  patch_size=args.patch_size, tubelet_size=args.tubelet_size)
    if args.pretrain:
        kwargs = dict(common, decoder_mode=args.decoder_mode, target=args.target)
        builder = build_pretrain_model
        macs = pretrain_macs(args.mask_ratio, args.mask_kind, decoder_ratio=args.decoder_ratio,
                             decoder_heads=args.decoder_heads, **kwargs)
    else:
        kwargs = dict(common, num_classes=args.num_classes)
        builder, macs = build_classifier, classifier_macs(**kwargs)
    with torch.device("meta"):
        params = sum(t.numel() for t in builder(**kwargs).parameters())
    stats = {"model": args.model, "kind": "pretrain" if args.pretrain else "classifier",
             "num_frames": args.num_frames, "img_size": args.img_size,
             "params_m": round(params / 1e6, 3), "gflops": round(macs / 1e9, 3)}
    if args.pretrain:
        stats.update(mask_ratio=args.mask_ratio, mask_kind=args.mask_kind, decoder_mode=args.decoder_mode,
                     target=args.target, decoder_ratio=args.decoder_ratio, decoder_heads=args.decoder_heads)
    else:
        stats["num_classes"] = args.num_classes
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # a bad size or ratio: one line, not a traceback
        sys.exit(f"model_stats: {err}")
