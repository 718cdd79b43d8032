"""The MotionMAE pretraining model: a ViT encoder on visible tokens and two decoders, the space
head (masked frame pixels) and the time head (masked temporal differences), each with its loss."""
from __future__ import annotations

import inspect
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from motionmae_ds.defaults import IMAGENET_MEAN, IMAGENET_STD
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
    them (masks made by hand) the mask is checked and its counts read on the host."""

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
                self.space_head = Decoder(**decoder_kwargs)
            if self.train_motion:
                self.time_head = Decoder(**decoder_kwargs)
        else:
            names = [n for n, on in (("head_frame", self.train_frame), ("head_motion", self.train_motion)) if on]
            self.decoder = Decoder(head_names=names, **decoder_kwargs)
        self.apply(init_vit_weights)
        for module in self.modules():
            if isinstance(module, Decoder):
                nn.init.trunc_normal_(module.mask_token, std=0.02)

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
    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        for module in (self.encoder, *[m for m in self.modules() if isinstance(m, Decoder)]):
            module.set_grad_checkpointing(enabled)

    def set_attention_backend(self, name: str) -> None:
        """The attention path (vit.ATTENTION_BACKENDS) of the encoder and every decoder."""
        for module in (self.encoder, *[m for m in self.modules() if isinstance(m, Decoder)]):
            module.set_attention_backend(name)

    def _token_order(self, mask: torch.Tensor, static: Optional[MaskCounts] = None) -> tuple[torch.Tensor, int]:
        """Visible token ids then masked ones, each ascending, and the visible count; both heads
        share this bookkeeping."""
        n_masked, _ = self._masked_count(mask, static=static)
        order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
        return order, self.num_tokens - n_masked

    def _masked_count(self, mask: torch.Tensor, counts: Sequence[torch.Tensor] = (),
                      static: Optional[MaskCounts] = None) -> tuple[int, list[int]]:
        """Check the mask and return its per-row masked count, with (min, max) of each of ``counts`` (B,):
        from ``static`` (no device read), or read from the device in one transfer (one host sync)."""
        if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[1] != self.num_tokens:
            raise ModelConfigError(f"mask must be bool (B, {self.num_tokens}), got {mask.dtype} "
                                   f"{tuple(mask.shape)}")
        if static is not None:
            if not 0 < static.num_masked < self.num_tokens:
                raise ModelConfigError(f"counts.num_masked={static.num_masked} must be in 1..{self.num_tokens - 1}")
            if counts and (static.kept_min is None or static.kept_max is None):
                raise ModelConfigError("decoder_keep with counts needs counts.kept_min/kept_max "
                                       "(masking.mask_counts with the decoder mask generator)")
            return static.num_masked, [static.kept_min, static.kept_max] * len(counts)
        lo, hi, *extra = torch.stack([v for c in (mask.sum(dim=1), *counts) for v in c.aminmax()]).tolist()
        if lo != hi or not 0 < lo < self.num_tokens:
            raise ModelConfigError(f"every mask row must mask the same count in 1..{self.num_tokens - 1}, "
                                   f"got counts from {lo} to {hi}")
        return lo, extra

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LOSSES[self.loss_type](pred.float(), target).float()

    def _head_loss(self, pred: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor] = None,
                   count: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One head's loss on fp32 predictions: the mean over every (token, value), or with ``valid`` (B, M)
        only over the real tokens (``count`` (B,) of them per sample) of a padded batch."""
        # Per-token normalisation commutes with the gather, so only the decoded tokens pay for it.
        if self.norm_target:
            target = tg.normalize_per_token(target, self.in_chans)
        if valid is None:
            return self._loss(pred, target)
        per_token = LOSSES[self.loss_type](pred, target, reduction="none").sum(dim=-1)
        return (per_token * valid).sum() / (count.sum().clamp_min(1).to(torch.float32) * pred.shape[-1])

    def forward(self, videos: torch.Tensor, mask: torch.Tensor, return_pred: bool = False,
                decoder_keep: Union[torch.Tensor, Mapping[str, torch.Tensor], None] = None,
                counts: Optional[MaskCounts] = None) -> dict[str, torch.Tensor]:
        if decoder_keep is not None:
            if return_pred:
                raise ModelConfigError("return_pred shows every masked token: call it without decoder_keep")
            return self._forward_decoder_masked(videos, mask, decoder_keep, counts)
        order, n_vis = self._token_order(mask, counts)
        x_vis = self.encoder(videos, order[:, :n_vis])

        preds = {}
        if self.decoder_mode == "divide":
            if self.train_frame:
                preds["frame"] = self.space_head.head(self.space_head(x_vis, order))
            if self.train_motion:
                preds["motion"] = self.time_head.head(self.time_head(x_vis, order))
        else:
            features = self.decoder(x_vis, order)
            for kind in ("frame", "motion"):
                if hasattr(self.decoder, f"head_{kind}"):
                    preds[kind] = getattr(self.decoder, f"head_{kind}")(features)

        zero = torch.zeros((), dtype=torch.float32, device=videos.device)
        out = {"loss": zero, "loss_frame": zero, "loss_motion": zero}
        if return_pred:  # every token's target, for figures
            full = self._pixel_targets(videos, frame=True, motion=True)
            masked_ids = order[:, n_vis:, None].expand(-1, -1, self.patch_dim)
            targets = {k: torch.gather(v, 1, masked_ids) for k, v in full.items()}
        else:  # training: only the masked tokens' targets are ever materialised
            targets = self._pixel_targets(videos, frame=self.train_frame, motion=self.train_motion,
                                          token_ids=order[:, n_vis:])
        weights = {"frame": self.loss_weight_frame, "motion": self.loss_weight_motion}
        for kind, pred in preds.items():
            pred = pred.float()
            out[f"loss_{kind}"] = self._head_loss(pred, targets[kind])
            out["loss"] = out["loss"] + weights[kind] * out[f"loss_{kind}"]
            if return_pred:
                out[f"pred_{kind}"] = pred
        if return_pred:
            out.update({f"target_{k}": tg.normalize_per_token(v, self.in_chans) if self.norm_target else v
                        for k, v in full.items()})
        return out

    @torch.no_grad()
    def _pixel_targets(self, videos: torch.Tensor, frame: bool, motion: bool,
                       token_ids: Union[torch.Tensor, Mapping[str, torch.Tensor], None] = None
                       ) -> dict[str, torch.Tensor]:
        """Un-normalised patches of the frames and of their differences from one [0, 1] copy of the clip:
        every token (B, N, P), or only ``token_ids`` (B, M) -> (B, M, P) (one tensor for both, or one per
        kind), read straight from the clip without patchifying every token first. Each target is
        materialised once per step."""
        def patches(x: torch.Tensor, kind: str) -> torch.Tensor:
            if token_ids is None:
                return self.patchify(x)
            ids = token_ids[kind] if isinstance(token_ids, Mapping) else token_ids
            return tg.patches_at(x, ids, self.patch_size, self.tubelet_size)

        pixels = self.unnormalize(videos)
        targets = {}
        if frame:
            targets["frame"] = patches(pixels, "frame")
        if motion:
            diff = tg.temporal_difference(pixels, self.motion_granularity, self.motion_signed)
            targets["motion"] = patches(diff, "motion")
        return targets

    # -- decoder masking -----------------------------------------------------------------------
    def _head_keeps(self, mask: torch.Tensor, decoder_keep: Union[torch.Tensor, Mapping[str, torch.Tensor]]
                    ) -> dict[str, torch.Tensor]:
        kinds = [k for k, on in (("frame", self.train_frame), ("motion", self.train_motion)) if on]
        if isinstance(decoder_keep, Mapping):
            missing = [k for k in kinds if k not in decoder_keep]
            if missing:
                raise ModelConfigError(f"decoder_keep has no entry for the {', '.join(missing)} head")
            keeps = {k: decoder_keep[k] for k in kinds}
        else:
            keeps = {k: decoder_keep for k in kinds}
        for kind, keep in keeps.items():
            if keep.dtype != torch.bool or tuple(keep.shape) != tuple(mask.shape):
                raise ModelConfigError(f"decoder_keep[{kind!r}] must be bool {tuple(mask.shape)} like the mask, "
                                       f"got {keep.dtype} {tuple(keep.shape)}")
        if self.decoder_mode == "shared" and len({id(k) for k in keeps.values()}) > 1:
            raise ModelConfigError("decoder_mode=shared runs one decoder for both heads, so both need the same "
                                   "decoder_keep (masking.decoder_heads: shared)")
        return keeps

    def _forward_decoder_masked(self, videos: torch.Tensor, mask: torch.Tensor,
                                decoder_keep: Union[torch.Tensor, Mapping[str, torch.Tensor]],
                                static: Optional[MaskCounts] = None) -> dict[str, torch.Tensor]:
        keeps = self._head_keeps(mask, decoder_keep)
        # one token set per distinct keep tensor (shared heads: one)
        sets: dict[int, torch.Tensor] = {}
        for keep in keeps.values():
            sets.setdefault(id(keep), mask & keep)
        counts = {key: sup.sum(dim=1) for key, sup in sets.items()}
        n_masked, kept_stats = self._masked_count(mask, list(counts.values()), static)
        n_vis = self.num_tokens - n_masked
        b = mask.shape[0]
        plans = {}
        for (key, sup), (k_lo, k_hi) in zip(sets.items(), zip(kept_stats[::2], kept_stats[1::2])):
            # visible (ascending), then masked & kept (ascending), then the other masked tokens, which pad
            # samples that keep fewer than the batch's most (with static counts: than the bound)
            rank = mask.to(torch.int8) * 2 - sup.to(torch.int8)
            order = torch.argsort(rank, dim=1, stable=True)[:, :n_vis + k_hi]
            valid = key_mask = None
            if k_lo != k_hi or k_hi == 0:
                valid = torch.arange(k_hi, device=mask.device)[None] < counts[key][:, None]
                key_mask = torch.cat([torch.ones(b, n_vis, dtype=torch.bool, device=mask.device), valid], dim=1)
            plans[key] = (order, key_mask, valid, counts[key])
        visible_ids = next(iter(plans.values()))[0][:, :n_vis]
        x_vis = self.encoder(videos, visible_ids)

        plan_of = {kind: plans[id(keep)] for kind, keep in keeps.items()}
        preds = {}
        if self.decoder_mode == "divide":
            heads = {"frame": getattr(self, "space_head", None), "motion": getattr(self, "time_head", None)}
            for kind, (order, key_mask, _, _) in plan_of.items():
                preds[kind] = heads[kind].head(heads[kind](x_vis, order, key_mask))
        else:
            order, key_mask, _, _ = next(iter(plan_of.values()))
            features = self.decoder(x_vis, order, key_mask)
            for kind in plan_of:
                preds[kind] = getattr(self.decoder, f"head_{kind}")(features)

        targets = self._pixel_targets(videos, frame=self.train_frame, motion=self.train_motion,
                                      token_ids={kind: plan[0][:, n_vis:] for kind, plan in plan_of.items()})
        zero = torch.zeros((), dtype=torch.float32, device=videos.device)
        out = {"loss": zero, "loss_frame": zero, "loss_motion": zero}
        weights = {"frame": self.loss_weight_frame, "motion": self.loss_weight_motion}
        for kind, pred in preds.items():
            _, _, valid, count = plan_of[kind]  # valid None: every sample keeps the same count
            out[f"loss_{kind}"] = self._head_loss(pred.float(), targets[kind], valid, count)
            out["loss"] = out["loss"] + weights[kind] * out[f"loss_{kind}"]
        return out

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
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, **unknown,
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
