"""Frozen-feature video object segmentation: DAVIS-2017 label propagation (the paper's Table 4).

    python launch/eval_vos.py                                  # the pretraining demo on the embedded set
    python launch/eval_vos.py --checkpoint runs/k400_b/checkpoints --config configs/finetune_k400_vit_base.yaml \
        --davis /data/DAVIS --split val --output_dir runs/vos_k400_b

--checkpoint: any encoder source (run dir, DeepSpeed checkpoint, .pth, HF directory; default: the config's
finetune.init); the config's model section sizes the encoder. Without --davis, the embedded synthetic set
(DAVIS layout, made once and cached). A random-init encoder of the same size runs beside it unless
--no_baseline. Writes OUTPUT_DIR/<encoder>/results/<seq>/*.png (palette masks), OUTPUT_DIR/<encoder>/overlays/<seq>/
*.png (frame | prediction | ground truth for the first --overlay_frames frames) and OUTPUT_DIR/<encoder>/metrics.json.
Exit codes: 0, 2.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from motionmae_ds.config import ConfigError, load_finetune_config
from motionmae_ds.eval.vos import (
    OVERLAY_FRAMES,
    PAIRINGS,
    PropagationSettings,
    report_lines,
    run_vos_evaluation,
    vos_sequences,
)
from motionmae_ds.runtime.cli import run_entry
from motionmae_ds.runtime.flags import add_checkpoint, add_config, add_option, add_output_dir, add_set


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MotionMAE frozen-feature video object segmentation")
    add_checkpoint(p, "encoder weights (default: the config's finetune.init)")
    add_config(p, "configs/finetune_demo.yaml", what="finetuning")
    add_set(p)
    add_option(p, "--davis", default=None, help="DAVIS-2017 root (default: the embedded synthetic set)")
    add_option(p, "--split", default="val", help="ImageSets/2017/<split>.txt")
    add_option(p, "--resolution", default="480p", help="JPEGImages/<resolution>")
    add_output_dir(p, "where results/ and metrics.json go, per encoder", default="runs/eval_vos", old=("--out",))
    add_option(p, "--no_baseline", action="store_true", help="skip the random-init encoder")
    add_option(p, "--overlay_frames", type=int, default=OVERLAY_FRAMES,
               help=f"overlay PNGs (frame | prediction | ground truth) of each sequence's first N frames, 0: none "
                    f"(default {OVERLAY_FRAMES})")
    for f in fields(PropagationSettings):
        kind = type(f.default)
        add_option(p, f"--{f.name}", type=kind, default=f.default,
                   choices=PAIRINGS if f.name == "pairing" else None, help=f"default {f.default}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = load_finetune_config(args.config, args.set)
        settings = PropagationSettings(**{f.name: getattr(args, f.name) for f in fields(PropagationSettings)})
        settings.validate()
        if args.overlay_frames < 0:
            raise ConfigError(f"--overlay_frames must be >= 0, got {args.overlay_frames}")
        source = args.checkpoint or cfg.finetune.init
        if source != "none" and not Path(source).exists():
            raise ConfigError(f"--checkpoint {source}: no such file or directory (the default is the config's "
                              f"finetune.init: run the pretraining demo first, or pass --checkpoint)")
        sequences, where = vos_sequences(cfg, args.davis, args.split, args.resolution)
        sources = {} if source == "none" else {"checkpoint": source}
        if not args.no_baseline or not sources:
            sources["random_init"] = None
        results = run_vos_evaluation(cfg, sources, sequences, settings, args.output_dir, args.overlay_frames)
        print(f"{len(sequences)} sequences of {where}; {settings}", flush=True)
        print("\n".join(report_lines(results)), flush=True)
        print(f"-> {args.output_dir}", flush=True)
        return 0

    return run_entry(body)


if __name__ == "__main__":
    sys.exit(main())
