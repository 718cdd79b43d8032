"""The per-sample reference of a decoder's loss under decoder masking, shared by the model tests
(tests/models/test_decoder_masking.py) and the loop's (tests/train/test_pretrain_loss.py): each sample alone, its
decoder run on exactly its visible tokens and its masked & kept ones, no batching, no padding, no token plan."""
import torch


def reference_head(model, videos, mask, keep, kind):
    """Sum of squared errors and the count of (token, value) pairs over masked & kept tokens, each sample
    alone: its decoder runs on its visible tokens and its own masked & kept tokens, nothing else."""
    dec, head = ((model.space_head, model.space_head.head) if kind == "frame" else
                 (model.time_head, model.time_head.head)) if model.decoder_mode == "divide" else (
        model.decoder, getattr(model.decoder, f"head_{kind}"))
    target_all = model.frame_target(videos) if kind == "frame" else model.motion_target(videos)
    sse, count = 0.0, 0
    for i in range(videos.shape[0]):
        vis = (~mask[i]).nonzero().flatten()
        sup = (mask[i] & keep[i]).nonzero().flatten()
        x_vis = model.encoder(videos[i:i + 1], vis[None])
        x = torch.cat([dec.encoder_to_decoder(x_vis)[0], dec.mask_token[0].expand(len(sup), -1)])
        x = x + dec.pos_embed[0, torch.cat([vis, sup])]
        for blk in dec.blocks:
            x = blk(x[None])[0]
        pred = head(dec.norm(x)[len(vis):])
        sse = sse + ((pred - target_all[i, sup]) ** 2).sum()
        count += pred.numel()
    return sse, count
