"""The MotionMAE pretraining model: a ViT encoder on visible tokens and two decoders, the space
head (masked frame pixels) and the time head (masked temporal differences), each with its loss."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from motionmae_ds.models import targets as tg
from motionmae_ds.models.decoder import Decoder
from motionmae_ds.models.masking import MaskCounts
from motionmae_ds.models.registry import resolve_size
from motionmae_ds.models.validation import (
    ModelConfigError,
    check_choice,
    check_fraction,
    check_positive_int,
    reject_unknown,
)
from motionmae_ds.models.vit import VisionTransformerEncoder, init_vit_weights

DECODER_MODES = ("divide", "shared")
TARGETS = ("frame", "motion", "frame_motion")
LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}


@dataclass(frozen=True)
class TokenPlan:
    """The tokens one decoder runs on and its loss averages over. ``order`` (B, V + M): the V visible token
    ids (ascending), then the M masked ones to decode (ascending); with decoder masking the masked & kept ones,
    samples that keep fewer padded with masked-not-kept ids. ``key_mask`` (B, V + M) False at padding and
    ``valid`` (B, M) True at real tokens, both None when nothing is padded; ``num_decoded`` (B,) real decoded
    tokens per sample, None when every masked token is decoded."""

    order: torch.Tensor
    num_visible: int
    key_mask: Optional[torch.Tensor] = None
    valid: Optional[torch.Tensor] = None
    num_decoded: Optional[torch.Tensor] = None

    @property
    def visible_ids(self) -> torch.Tensor:
        return self.order[:, :self.num_visible]

    @property
    def decoded_ids(self) -> torch.Tensor:
        return self.order[:, self.num_visible:]


class MotionMAE(nn.Module):
    """Build through `build_pretrain_model`, which resolves the registry and checks every value.

    forward(videos, mask, return_pred=False, decoder_keep=None): videos (B, C, T, H, W) normalised by
    mean/std, mask bool (B, N) with True = masked and the same count in every row. Returns fp32 "loss",
    "loss_frame", "loss_motion" (0 for a target not trained) and, with return_pred, "pred_frame" /
    "pred_motion" (B, N_masked, P) in ascending token order and "target_frame" / "target_motion"
    (B, N, P) for every token.

    decoder_keep (decoder masking, masking.RunningCellDecoderMask): bool (B, N), or {"frame": ..., "motion":
    ...} per head, True = the decoder runs on that token. Each decoder then runs on the visible tokens and
    the masked tokens its set keeps, and its loss averages over masked & kept tokens only. Samples may keep
    different counts: the shorter ones are padded with masked-not-kept places that attention ignores and
    the loss skips. None (the default) decodes every masked token, exactly the paper's model.

    counts (masking.MaskCounts, from ``mask_counts(generator, decoder generator)``): the counts the mask
    generators guarantee. With them the step reads nothing back from the device (no host sync): the gathers
    take the static visible count and the decoders pad to the static bound of masked & kept tokens. Without
    them (masks made by hand) the mask is checked and its counts read on the host.

    The step is mae's: ``plan_tokens`` (each head's visible and decoded tokens; no decoder masking keeps every
    masked token), ``forward_encoder``, ``forward_decoder`` (predictions by name), ``forward_loss``."""

    def __init__(self, *, num_frames: int, img_size: int, patch_size: int, tubelet_size: int, in_chans: int,
                 embed_dim: int, depth: int, num_heads: int, decoder_embed_dim: int, decoder_depth: int,
                 decoder_num_heads: int, decoder_mode: str, pos_embed: str, target: str, norm_target: bool,
                 motion_granularity: int, motion_signed: bool, loss_type: str, loss_weight_frame: float,
                 loss_weight_motion: float, drop_path_rate: float, grad_checkpointing: bool,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        check_choice("decoder_mode", decoder_mode, DECODER_MODES)
        check_choice("target", target, TARGETS)
        check_choice("loss_type", loss_type, LOSSES)
        check_fraction("drop_path_rate", drop_path_rate, low_open=False, high_open=True)
        check_positive_int("motion_granularity", motion_granularity)
        if motion_granularity >= num_frames:
            raise ModelConfigError(f"motion_granularity={motion_granularity} leaves no frame difference "
                                   f"in a clip of num_frames={num_frames}")
        for key, w in (("loss_weight_frame", loss_weight_frame), ("loss_weight_motion", loss_weight_motion)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ModelConfigError(f"{key}={w!r} must be a number >= 0")
        for key, values in (("mean", mean), ("std", std)):
            if len(values) != in_chans:
                raise ModelConfigError(f"{key}={tuple(values)} needs one value per channel (in_chans={in_chans})")
        if any(s <= 0 for s in std):
            raise ModelConfigError(f"std={tuple(std)} must be positive")

        self.patch_size, self.tubelet_size, self.in_chans = patch_size, tubelet_size, in_chans
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.norm_target, self.loss_type = bool(norm_target), loss_type
        self.motion_granularity, self.motion_signed = motion_granularity, bool(motion_signed)
        self.decoder_mode = decoder_mode
        self.train_frame = target in ("frame", "frame_motion")
        self.train_motion = target in ("motion", "frame_motion")
        self.loss_weight_frame, self.loss_weight_motion = float(loss_weight_frame), float(loss_weight_motion)

        self.encoder = VisionTransformerEncoder(
            num_frames, img_size, patch_size, tubelet_size, in_chans, embed_dim, depth, num_heads,
            drop_path_rate=drop_path_rate, pos_embed=pos_embed, final_norm=True,
            grad_checkpointing=grad_checkpointing)
        self.grid = self.encoder.grid
        self.num_tokens = self.encoder.num_tokens
        self.patch_dim = tubelet_size * patch_size * patch_size * in_chans
        decoder_kwargs = dict(encoder_dim=embed_dim, grid=self.grid, dim=decoder_embed_dim, depth=decoder_depth,
                              num_heads=decoder_num_heads, out_dim=self.patch_dim, pos_embed=pos_embed,
                              drop_path_rate=drop_path_rate, grad_checkpointing=grad_checkpointing)
        if decoder_mode == "divide":
            # Only the heads a target needs exist: an idle head would hold parameters without grads.
            if self.train_frame:
                self.space_head = Decoder(heads={"frame": "head"}, **decoder_kwargs)
            if self.train_motion:
                self.time_head = Decoder(heads={"motion": "head"}, **decoder_kwargs)
        else:
            kinds = [k for k, on in (("frame", self.train_frame), ("motion", self.train_motion)) if on]
            self.decoder = Decoder(heads={k: f"head_{k}" for k in kinds}, **decoder_kwargs)
        self.apply(init_vit_weights)
        for decoder in self.decoders():
            nn.init.trunc_normal_(decoder.mask_token, std=0.02)

    # -- patches and targets -------------------------------------------------------------------
    def patchify(self, videos: torch.Tensor) -> torch.Tensor:
        return tg.patchify(videos, self.patch_size, self.tubelet_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        return tg.unpatchify(patches, self.grid, self.patch_size, self.tubelet_size)

    def unnormalize(self, videos: torch.Tensor) -> torch.Tensor:
        """Loader-normalised clip -> fp32 pixels in [0, 1]."""
        return tg.unnormalize(videos, self.mean, self.std)

    def _finish_target(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patchify(pixels)
        return tg.normalize_per_token(patches, self.in_chans) if self.norm_target else patches

    @torch.no_grad()
    def frame_target(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, N, P) fp32 frame target of a loader-normalised clip (computed on its [0, 1] pixels)."""
        return self._finish_target(self.unnormalize(videos))

    @torch.no_grad()
    def motion_target(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, N, P) fp32 motion target: patches of |x_{t+g} - x_t| (or signed) on [0, 1] pixels."""
        diff = tg.temporal_difference(self.unnormalize(videos), self.motion_granularity, self.motion_signed)
        return self._finish_target(diff)

    # -- forward -------------------------------------------------------------------------------
    def decoders(self) -> list[Decoder]:
        """The decoders that exist (divide: space_head then time_head, each only if trained; shared: one)."""
        if self.decoder_mode == "shared":
            return [self.decoder]
        return [m for m in (getattr(self, "space_head", None), getattr(self, "time_head", None)) if m is not None]

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        for module in (self.encoder, *self.decoders()):
            module.set_grad_checkpointing(enabled)

    def set_attention_backend(self, name: str) -> None:
        """The attention path (vit.ATTENTION_BACKENDS) of the encoder and every decoder."""
        for module in (self.encoder, *self.decoders()):
            module.set_attention_backend(name)

    def forward(self, videos: torch.Tensor, mask: torch.Tensor, return_pred: bool = False,
                decoder_keep: Union[torch.Tensor, Mapping[str, torch.Tensor], None] = None,
                counts: Optional[MaskCounts] = None) -> dict[str, torch.Tensor]:
        if return_pred and decoder_keep is not None:
            raise ModelConfigError("return_pred shows every masked token: call it without decoder_keep")
        plans = self.plan_tokens(mask, decoder_keep, counts)
        # every plan lists the same visible tokens first
        x_vis = self.forward_encoder(videos, next(iter(plans.values())).visible_ids)
        preds = self.forward_decoder(x_vis, plans)
        return self.forward_loss(videos, preds, plans, return_pred)

    def plan_tokens(self, mask: torch.Tensor,
                    decoder_keep: Union[torch.Tensor, Mapping[str, torch.Tensor], None] = None,
                    counts: Optional[MaskCounts] = None) -> dict[str, TokenPlan]:
        """Each trained head's TokenPlan ("frame", "motion"); heads that decode the same tokens share one plan
        object. No decoder_keep keeps every masked token: one plan, no padding."""
        keeps = self._head_keeps(mask, decoder_keep)
        kept_sets = {}  # per distinct keep tensor (None: every masked token) its masked & kept tokens
        for keep in keeps.values():
            if id(keep) not in kept_sets:
                kept_sets[id(keep)] = None if keep is None else mask & keep
        num_kept = {key: None if kept is None else kept.sum(dim=1) for key, kept in kept_sets.items()}
        set_counts = self._check_counts(mask, list(num_kept.values()), counts)
        plans = {}
        for (key, kept), set_count in zip(kept_sets.items(), set_counts):
            n_vis = self.num_tokens - set_count.num_masked
            # visible (ascending), then masked & kept (ascending), then the other masked tokens, which pad
            # samples that keep fewer than the batch's most (with static counts: than the bound). Keeping every
            # masked token (kept = mask) ranks by the mask alone: the same order without the extra ops.
            rank = mask.to(torch.int8) if kept is None else mask.to(torch.int8) * 2 - kept.to(torch.int8)
            order = torch.argsort(rank, dim=1, stable=True)[:, :n_vis + set_count.kept_max]
            valid = key_mask = None
            if set_count.kept_min != set_count.kept_max or set_count.kept_max == 0:
                valid = torch.arange(set_count.kept_max, device=mask.device)[None] < num_kept[key][:, None]
                visible = torch.ones(mask.shape[0], n_vis, dtype=torch.bool, device=mask.device)
                key_mask = torch.cat([visible, valid], dim=1)
            plans[key] = TokenPlan(order, n_vis, key_mask, valid, num_kept[key])
        return {kind: plans[id(keep)] for kind, keep in keeps.items()}

    def forward_encoder(self, videos: torch.Tensor, visible_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(videos, visible_ids)

    def forward_decoder(self, x_vis: torch.Tensor, plans: Mapping[str, TokenPlan]) -> dict[str, torch.Tensor]:
        """Predictions by name ("frame", "motion"), (B, M, patch_dim) in each plan's decoded order."""
        preds = {}
        for decoder in self.decoders():
            plan = plans[next(iter(decoder.heads))]  # a shared decoder's heads share one plan
            preds.update(decoder(x_vis, plan.order, plan.key_mask))
        return preds

    def forward_loss(self, videos: torch.Tensor, preds: Mapping[str, torch.Tensor],
                     plans: Mapping[str, TokenPlan], return_pred: bool = False) -> dict[str, torch.Tensor]:
        """The weighted sum of the heads' losses, each the mean error over its decoded masked tokens."""
        zero = torch.zeros((), dtype=torch.float32, device=videos.device)
        out = {"loss": zero, "loss_frame": zero, "loss_motion": zero}
        if return_pred:  # every token's target, for figures
            full = self._pixel_targets(videos, frame=True, motion=True)
            decoded = next(iter(plans.values())).decoded_ids[..., None].expand(-1, -1, self.patch_dim)
            targets = {k: torch.gather(v, 1, decoded) for k, v in full.items()}
        else:  # training: only the decoded tokens' targets are ever materialised
            targets = self._pixel_targets(videos, frame=self.train_frame, motion=self.train_motion,
                                          token_ids={kind: plan.decoded_ids for kind, plan in plans.items()})
        weights = {"frame": self.loss_weight_frame, "motion": self.loss_weight_motion}
        for kind, pred in preds.items():
            pred = pred.float()
            out[f"loss_{kind}"] = self._head_loss(pred, targets[kind], plans[kind])
            out["loss"] = out["loss"] + weights[kind] * out[f"loss_{kind}"]
            if return_pred:
                out[f"pred_{kind}"] = pred
        if return_pred:
            out.update({f"target_{k}": tg.normalize_per_token(v, self.in_chans) if self.norm_target else v
                        for k, v in full.items()})
        return out

    def _head_loss(self, pred: torch.Tensor, target: torch.Tensor, plan: TokenPlan) -> torch.Tensor:
        """One head's loss on fp32 predictions: the mean over every (token, value), or over the real tokens
        only when the plan pads."""
        # Per-token normalisation commutes with the gather, so only the decoded tokens pay for it.
        if self.norm_target:
            target = tg.normalize_per_token(target, self.in_chans)
        if plan.valid is None:
            return LOSSES[self.loss_type](pred, target).float()
        per_token = LOSSES[self.loss_type](pred, target, reduction="none").sum(dim=-1)
        return (per_token * plan.valid).sum() / (plan.num_decoded.sum().clamp_min(1).to(torch.float32)
                                                 * pred.shape[-1])

    @torch.no_grad()
    def _pixel_targets(self, videos: torch.Tensor, frame: bool, motion: bool,
                       token_ids: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """Un-normalised patches of the frames and of their differences from one [0, 1] copy of the clip:
        every token (B, N, P), or only ``token_ids[kind]`` (B, M) -> (B, M, P), read straight from the clip
        without patchifying every token first. Each target is materialised once per step."""
        def patches(x: torch.Tensor, kind: str) -> torch.Tensor:
            if token_ids is None:
                return self.patchify(x)
            return tg.patches_at(x, token_ids[kind], self.patch_size, self.tubelet_size)

        pixels = self.unnormalize(videos)
        targets = {}
        if frame:
            targets["frame"] = patches(pixels, "frame")
        if motion:
            diff = tg.temporal_difference(pixels, self.motion_granularity, self.motion_signed)
            targets["motion"] = patches(diff, "motion")
        return targets

    # -- checks --------------------------------------------------------------------------------
    def _head_keeps(self, mask: torch.Tensor, decoder_keep: Union[torch.Tensor, Mapping[str, torch.Tensor], None]
                    ) -> dict[str, Optional[torch.Tensor]]:
        """Each trained head's decoder keep, or None for every head when decoder masking is off."""
        kinds = [k for k, on in (("frame", self.train_frame), ("motion", self.train_motion)) if on]
        if decoder_keep is None:
            return dict.fromkeys(kinds)
        if isinstance(decoder_keep, Mapping):
            missing = [k for k in kinds if k not in decoder_keep]
            if missing:
                raise ModelConfigError(f"decoder_keep has no entry for the {', '.join(missing)} head")
            keeps = {k: decoder_keep[k] for k in kinds}
        else:
            keeps = dict.fromkeys(kinds, decoder_keep)
        for kind, keep in keeps.items():
            if keep.dtype != torch.bool or tuple(keep.shape) != tuple(mask.shape):
                raise ModelConfigError(f"decoder_keep[{kind!r}] must be bool {tuple(mask.shape)} like the mask, "
                                       f"got {keep.dtype} {tuple(keep.shape)}")
        if self.decoder_mode == "shared" and len({id(k) for k in keeps.values()}) > 1:
            raise ModelConfigError("decoder_mode=shared runs one decoder for both heads, so both need the same "
                                   "decoder_keep (masking.decoder_heads: shared)")
        return keeps

    def _check_counts(self, mask: torch.Tensor, num_kept: Sequence[Optional[torch.Tensor]],
                      counts: Optional[MaskCounts]) -> list[MaskCounts]:
        """Check the mask and return the counts each kept set obeys (``num_kept``: (B,) masked & kept per
        sample, None for a set that keeps every masked token): ``counts`` (no device read), or the actual
        counts read from the device in one transfer (one host sync)."""
        if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[1] != self.num_tokens:
            raise ModelConfigError(f"mask must be bool (B, {self.num_tokens}), got {mask.dtype} "
                                   f"{tuple(mask.shape)}")
        if counts is not None:
            if not 0 < counts.num_masked < self.num_tokens:
                raise ModelConfigError(f"counts.num_masked={counts.num_masked} must be in 1..{self.num_tokens - 1}")
            if any(s is not None for s in num_kept) and (counts.kept_min is None or counts.kept_max is None):
                raise ModelConfigError("decoder_keep with counts needs counts.kept_min/kept_max "
                                       "(masking.mask_counts with the decoder mask generator)")
            every = MaskCounts(counts.num_masked, counts.num_masked, counts.num_masked)
            return [every if s is None else counts for s in num_kept]
        read = [s for s in num_kept if s is not None]
        lo, hi, *bounds = torch.stack([v for c in (mask.sum(dim=1), *read) for v in c.aminmax()]).tolist()
        if lo != hi or not 0 < lo < self.num_tokens:
            raise ModelConfigError(f"every mask row must mask the same count in 1..{self.num_tokens - 1}, "
                                   f"got counts from {lo} to {hi}")
        read_bounds = iter(zip(bounds[::2], bounds[1::2]))
        return [MaskCounts(lo, lo, lo) if s is None else MaskCounts(lo, *next(read_bounds)) for s in num_kept]

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay beyond the usual 1-D ones (mask tokens are 3-D)."""
        return {name for name, _ in self.named_parameters() if name.endswith("mask_token")}


def build_pretrain_model(
    name: str = "vit_base", num_frames: int = 16, img_size: int = 224, patch_size: int = 16,
    tubelet_size: int = 2, in_chans: int = 3,
    embed_dim: Optional[int] = None, depth: Optional[int] = None, num_heads: Optional[int] = None,
    decoder_embed_dim: Optional[int] = None, decoder_depth: Optional[int] = None,
    decoder_num_heads: Optional[int] = None,
    decoder_mode: str = "divide", pos_embed: str = "sincos_1d", target: str = "frame_motion",
    norm_target: bool = False, motion_granularity: int = 1, motion_signed: bool = False,
    loss_type: str = "mse", loss_weight_frame: float = 1.0, loss_weight_motion: float = 1.0,
    drop_path_rate: float = 0.0, grad_checkpointing: bool = False,
    mean: Sequence[float] = tg.IMAGENET_MEAN, std: Sequence[float] = tg.IMAGENET_STD, **unknown,
) -> MotionMAE:
    """The pretraining model of registry size `name`; non-None size arguments override the registry."""
    reject_unknown("build_pretrain_model", unknown, PRETRAIN_KWARGS)
    for key, value in (("num_frames", num_frames), ("img_size", img_size), ("patch_size", patch_size),
                       ("tubelet_size", tubelet_size), ("in_chans", in_chans)):
        check_positive_int(key, value)
    size = resolve_size(name, embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth, decoder_num_heads)
    return MotionMAE(
        num_frames=num_frames, img_size=img_size, patch_size=patch_size, tubelet_size=tubelet_size,
        in_chans=in_chans, **vars(size), decoder_mode=decoder_mode, pos_embed=pos_embed, target=target,
        norm_target=norm_target, motion_granularity=motion_granularity, motion_signed=motion_signed,
        loss_type=loss_type, loss_weight_frame=loss_weight_frame, loss_weight_motion=loss_weight_motion,
        drop_path_rate=drop_path_rate, grad_checkpointing=grad_checkpointing, mean=mean, std=std)


PRETRAIN_KWARGS = tuple(p for p in inspect.signature(build_pretrain_model).parameters if p != "unknown")
