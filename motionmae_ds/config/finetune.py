"""The finetuning / probing job config: model, data, mixup, optimiser, schedule, finetune, eval, run.

Built from the same sections and loader as pretraining (same error style, same batch rules: the YAML owns
the batch, the DeepSpeed JSON only engine settings). ``schedule.batch_size`` counts videos per device; with
``data.num_repeats`` R each video gives R clips, so a micro-batch holds batch_size x R clips (the lr scaling
rule uses videos, as the recipes of the paper do).

``finetune.init`` names the weights to start from: a pretraining run directory, a DeepSpeed checkpoint
directory (any ZeRO world size), or a ``.pth`` file (ours or VideoMAE's); ``none`` trains from scratch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from motionmae_ds.config.checks import check_choices, check_fractions, check_ranges, check_shared
from motionmae_ds.config.loader import REPO_ROOT, ConfigError, SectionedConfig, load_sections
from motionmae_ds.config.sections import DataSection, ModelSection, OptimSection, RunSection, ScheduleSection
from motionmae_ds.data.sampling import SAMPLINGS
from motionmae_ds.models.classifier import PROBE_NORMS

DEFAULT_FINETUNE_CONFIG = REPO_ROOT / "configs" / "finetune_demo.yaml"
PROBES = ("none", "linear", "attentive")


@dataclass
class FinetuneModelSection(ModelSection):
    num_classes: int = 174
    drop_path_rate: float = 0.1
    head_dropout: float = 0.0
    # the head's initial weights are scaled by this: near-uniform logits at the start (models.classifier)
    init_scale: float = 0.001


@dataclass
class FinetuneDataSection(DataSection):
    # ignored with data.synthetic, which uses the embedded labelled set (motion-only classes)
    train_list: str = ""
    val_list: str = ""
    test_list: str = ""
    scale: tuple[float, float] = (0.08, 1.0)
    # eval: shorter side resized to this, then crops of model.img_size (None = img_size * 256 / 224)
    short_side_size: Optional[int] = None
    # timm-style RandAugment spec; empty = off
    rand_aug: str = "rand-m9-mstd0.5-inc1"
    random_erase: float = 0.25
    # repeated sampling: clips drawn per decoded video (paper: 2 for SSv2/K400)
    num_repeats: int = 1
    # dense: num_frames at data.sampling_rate (K400, UCF101); segment: one frame from each of num_frames equal
    # segments of the whole video (VideoMAE's SSv2 protocol; data.sampling_rate unused), test views = the
    # segments' centres, starts, ... (eval.test_clips of them); data/sampling.py has the exact rule
    sampling: str = "dense"


@dataclass
class MixupSection:
    # Beta(alpha, alpha) for mixup and cutmix; 0 turns that one off
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    # probability that a batch is mixed at all, and that a mixed batch uses cutmix rather than mixup
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1


@dataclass
class FinetuneOptimSection(OptimSection):
    base_lr: float = 5e-4
    min_lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.75


@dataclass
class FinetuneScheduleSection(ScheduleSection):
    epochs: int = 30
    warmup_epochs: int = 5
    batch_size: int = 8


@dataclass
class FinetuneSection:
    # where the encoder weights come from; "none" = random init
    init: str = "none"
    # keep a pretrained head when its shape fits (e.g. evaluating/continuing a finetuned checkpoint)
    init_keep_head: bool = False
    # none: finetune the whole classifier; linear: frozen encoder, normalised mean-pooled tokens, a linear head;
    # attentive: frozen encoder, learned queries cross-attending over its tokens (models/attentive.py), a linear head
    probe: str = "none"
    # the old spelling of probe: linear, kept so that older recipes and checkpoints' configs load
    linear_probe: bool = False
    probe_norm: str = "batchnorm"
    # attentive probe: learned query tokens, and attention heads (null = the encoder's own head count)
    probe_queries: int = 1
    probe_heads: Optional[int] = None
    # a probe of a randomly initialised encoder (finetune.init: none) is the baseline a pretrained one is
    # compared with; it is refused unless asked for here, so that a forgotten init does not look like a result
    probe_random_init: bool = False
    model_ema: bool = False
    model_ema_decay: float = 0.9999


@dataclass
class EvalSection:
    # one-view validation every N epochs (0 = never); the multi-view test pass runs once at the end
    val_every_epochs: int = 1
    test_clips: int = 2
    test_crops: int = 3
    # videos per forward in evaluation; each test video contributes clips x crops views
    batch_size: int = 4
    # write every class probability into predictions.jsonl (top-5 is always there)
    save_scores: bool = True


@dataclass
class FinetuneRunSection(RunSection):
    keep_last: int = 1


@dataclass
class FinetuneConfig(SectionedConfig):
    model: FinetuneModelSection = field(default_factory=FinetuneModelSection)
    data: FinetuneDataSection = field(default_factory=FinetuneDataSection)
    mixup: MixupSection = field(default_factory=MixupSection)
    optim: FinetuneOptimSection = field(default_factory=FinetuneOptimSection)
    schedule: FinetuneScheduleSection = field(default_factory=FinetuneScheduleSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    eval: EvalSection = field(default_factory=EvalSection)
    run: FinetuneRunSection = field(default_factory=FinetuneRunSection)
    # where it came from, for messages and the default output dir (not a YAML key)
    source: str = field(default="<defaults>", repr=False, compare=False)

    @property
    def short_side(self) -> int:
        """Evaluation resize target of the shorter side (VideoMAE's 256 for 224 crops)."""
        return self.data.short_side_size or round(self.model.img_size * 256 / 224)

    @property
    def mixup_active(self) -> bool:
        m = self.mixup
        return m.prob > 0 and (m.mixup_alpha > 0 or m.cutmix_alpha > 0)


def load_finetune_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None
                         ) -> FinetuneConfig:
    """Load ``path`` (default: configs/finetune_demo.yaml), apply ``--set`` overrides, validate."""
    cfg = load_sections(FinetuneConfig, Path(path) if path is not None else DEFAULT_FINETUNE_CONFIG, overrides)
    validate_finetune(cfg)
    return cfg


def validate_finetune(cfg: FinetuneConfig) -> None:
    """Value checks that do not touch the file system (recipes must load on any machine)."""
    src = cfg.source
    check_choices(src, {"finetune.probe_norm": (cfg.finetune.probe_norm, PROBE_NORMS),
                        "data.sampling": (cfg.data.sampling, SAMPLINGS)})
    check_ranges(src, positive={
        "model.num_classes": cfg.model.num_classes, "data.num_repeats": cfg.data.num_repeats,
        "eval.test_clips": cfg.eval.test_clips, "eval.test_crops": cfg.eval.test_crops,
        "eval.batch_size": cfg.eval.batch_size,
    }, nonneg={
        "mixup.mixup_alpha": cfg.mixup.mixup_alpha, "mixup.cutmix_alpha": cfg.mixup.cutmix_alpha,
        "eval.val_every_epochs": cfg.eval.val_every_epochs,
    })
    check_fractions(src, {
        "mixup.prob": cfg.mixup.prob, "mixup.switch_prob": cfg.mixup.switch_prob,
        "mixup.label_smoothing": cfg.mixup.label_smoothing, "data.random_erase": cfg.data.random_erase,
        "finetune.model_ema_decay": cfg.finetune.model_ema_decay,
    })
    if not 0.0 < cfg.optim.layer_decay <= 1.0:
        raise ConfigError(f"{src}: optim.layer_decay={cfg.optim.layer_decay} must be in (0, 1]")
    check_shared(cfg)
    if cfg.short_side < cfg.model.img_size:
        raise ConfigError(f"{src}: data.short_side_size={cfg.data.short_side_size} is smaller than "
                          f"model.img_size={cfg.model.img_size}")
    if not cfg.data.synthetic and not cfg.data.train_list and not cfg.data.shards:
        raise ConfigError(f"{src}: data.train_list is empty (set it, or data.synthetic: true)")
    if not cfg.finetune.init:
        raise ConfigError(f"{src}: finetune.init is empty (a checkpoint path, or none for random init)")
    check_probe(cfg)


def check_probe(cfg: FinetuneConfig) -> None:
    """``finetune.linear_probe: true`` is read as ``probe: linear`` (and set back in step, so every reader
    sees one answer); the attentive probe's keys; a probe needs pretrained weights unless asked otherwise."""
    src, ft = cfg.source, cfg.finetune
    check_choices(src, {"finetune.probe": (ft.probe, PROBES)})
    if ft.linear_probe:
        if ft.probe not in ("none", "linear"):
            raise ConfigError(f"{src}: finetune.linear_probe=true contradicts finetune.probe={ft.probe} "
                              f"(linear_probe is the old spelling of probe: linear; keep one)")
        ft.probe = "linear"
    ft.linear_probe = ft.probe == "linear"
    check_ranges(src, positive={"finetune.probe_queries": ft.probe_queries}, nonneg={})
    if ft.probe_heads is not None:
        check_ranges(src, positive={"finetune.probe_heads": ft.probe_heads}, nonneg={})
    if ft.probe != "none" and ft.init.lower() == "none" and not ft.probe_random_init:
        raise ConfigError(f"{src}: finetune.probe={ft.probe} needs pretrained weights (finetune.init is none; "
                          f"set finetune.probe_random_init=true for the random-encoder baseline)")
