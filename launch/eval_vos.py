"""Frozen-feature video object segmentation: DAVIS-2017 label propagation (the paper's Table 4).

    python launch/eval_vos.py                                  # the pretraining demo on the embedded set
    python launch/eval_vos.py --checkpoint runs/k400_b/checkpoints --config configs/finetune_k400_vit_base.yaml \
        --davis /data/DAVIS --split val --out runs/vos_k400_b

--checkpoint: any encoder source (run dir, DeepSpeed checkpoint, .pth, HF directory; default: the config's
finetune.init); the config's model section sizes the encoder. Without --davis, the embedded synthetic set
(DAVIS layout, made once and cached). A random-init encoder of the same size runs beside it unless
--no_baseline. Writes OUT/<encoder>/results/<seq>/*.png and OUT/<encoder>/metrics.json. Exit codes: 0, 2.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from motionmae_ds.config import ConfigError, load_finetune_config
from motionmae_ds.eval.vos import PAIRINGS, PropagationSettings, report_lines, run_vos_evaluation, vos_sequences
from motionmae_ds.runtime.cli import run_entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MotionMAE frozen-feature video object segmentation")
    p.add_argument("--checkpoint", default=None, help="encoder weights (default: the config's finetune.init)")
    p.add_argument("--config", default=None, help="finetuning YAML (default: configs/finetune_demo.yaml)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    p.add_argument("--davis", default=None, help="DAVIS-2017 root (default: the embedded synthetic set)")
    p.add_argument("--split", default="val", help="ImageSets/2017/<split>.txt")
    p.add_argument("--resolution", default="480p", help="JPEGImages/<resolution>")
    p.add_argument("--out", default="runs/eval_vos", help="output directory")
    p.add_argument("--no_baseline", action="store_true", help="skip the random-init encoder")
    for f in fields(PropagationSettings):
        kind = type(f.default)
        p.add_argument(f"--{f.name}", type=kind, default=f.default,
                       choices=PAIRINGS if f.name == "pairing" else None, help=f"default {f.default}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        cfg = load_finetune_config(args.config, args.set)
        settings = PropagationSettings(**{f.name: getattr(args, f.name) for f in fields(PropagationSettings)})
        settings.validate()
        source = args.checkpoint or cfg.finetune.init
        if source != "none" and not Path(source).exists():
            raise ConfigError(f"--checkpoint {source}: no such file or directory (the default is the config's "
                              f"finetune.init: run the pretraining demo first, or pass --checkpoint)")
        sequences, where = vos_sequences(cfg, args.davis, args.split, args.resolution)
        sources = {} if source == "none" else {"checkpoint": source}
        if not args.no_baseline or not sources:
            sources["random_init"] = None
        results = run_vos_evaluation(cfg, sources, sequences, settings, args.out)
        print(f"{len(sequences)} sequences of {where}; {settings}", flush=True)
        print("\n".join(report_lines(results)), flush=True)
        print(f"-> {args.out}", flush=True)
        return 0

    return run_entry(body)


if __name__ == "__main__":
    sys.exit(main())
