"""ZeRO-3 (weights partitioned over the ranks) through the real `deepspeed` launcher on 2 CPU ranks: a pretraining
run with activation checkpointing (each block's recompute gathers its weights again) trains, writes ZeRO-3's
checkpoint layout, resumes after kill -9 exactly where an uninterrupted run is, draws its reconstruction figures
from gathered weights, and converts to plain fp32 weights, the encoder and HF formats, and
DeepSpeed's universal format, which a 1-rank ZeRO-3 engine loads with the same gathered fp32 weights."""
import json

import torch
from safetensors.torch import load_file
from transformers import VideoMAEModel

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.checkpoint.hf import kwargs_from_hf_config
from motionmae_ds.models.vit import VisionTransformerEncoder
from tests.checkpoint.zero_runs import deepspeed_run
from tests.helpers import REPO, assert_same_steps, call_main, read_log, run_killed_at
from tests.helpers import run_pretrain as run

ZERO3 = REPO / "ds_configs" / "zero3.json"
STEPS = 9  # 12 videos / (2 ranks x batch 2) = 3 steps per epoch, 3 epochs


def test_zero3_kill9_resume_and_conversions(tiny_config, tmp_path):
    cfg = tiny_config(schedule={"epochs": 3, "warmup_epochs": 1, "batch_size": 2},
                      model={"depth": 2, "drop_path_rate": 0.1, "grad_checkpointing": True},
                      run={"save_every_steps": 2, "save_every_epochs": 1, "log_every": 1, "keep_last": 0,
                           "visualize": True})
    # the tiny model's tensors are all below ZeRO-3's persistence threshold, which would keep them whole on every
    # rank: threshold 0 partitions every weight, as ViT-H's large ones are
    ds = json.loads(ZERO3.read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    zero3 = tmp_path / "zero3_partitioned.json"
    zero3.write_text(json.dumps(ds))
    args = ["--config", cfg, "--deepspeed_config", zero3]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"

    ref = run(args + ["--output_dir", ref_dir], ranks=2)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    reference = {r["step"]: r for r in read_log(ref_dir)}
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert reference[STEPS]["loss"] < reference[1]["loss"]

    # kill -9 at step 6: the last checkpoint is step 4's (mid-epoch: steps 4-6 are epoch 1), step 5 is logged past it
    rows = run_killed_at("pretrain", 6, args + ["--output_dir", cut_dir], 2, tmp_path / "cut1.txt")
    latest = cut_dir / "checkpoints" / "latest"
    resumed_tag = latest.read_text().strip()
    assert resumed_tag == "step00000004" and [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    resumed_step = 4

    again = run(args + ["--output_dir", cut_dir], ranks=2)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {cut_dir / 'checkpoints' / resumed_tag}" in again.stdout
    resumed = {r["step"]: r for r in read_log(cut_dir)}
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert_same_steps(reference, resumed, resumed_step + 1, STEPS, ("loss", "loss_frame", "loss_motion", "grad_norm"))

    # ZeRO-3's layout: per-rank model states, no mp_rank_00_model_states.pt; two optimizer shards
    ckpts = cut_dir / "checkpoints"
    final = ckpt.tag_for(STEPS)
    tag_dir = ckpts / final
    assert not (tag_dir / ckpt.MODEL_STATES).exists()
    assert sorted(p.name for p in tag_dir.glob("zero_pp_rank_*_model_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    assert ckpt.saved_world_size(ckpts, final) == 2 and ckpt.resolve(cut_dir) == (ckpts, final)
    assert ckpt.read_client_state(ckpts, final)["step"] == STEPS
    # figures need the whole model on rank 0: drawn from the gathered weights at every checkpoint
    assert (cut_dir / "vis" / f"{final}.png").stat().st_size > 1000

    # conversions, in this process (their subprocess forms are tested in tests/tools)
    plain_file, enc_file, hf_dir = tmp_path / "plain.pth", tmp_path / "enc.safetensors", tmp_path / "hf"
    for fmt, out, extra in (("plain", plain_file, []), ("encoder", enc_file, ["--safetensors"]), ("hf", hf_dir, [])):
        done = call_main("convert_checkpoint.py", ["--checkpoint", ckpts, "--output", out, "--format", fmt, *extra])
        assert done.returncode == 0, done.stderr
    plain = torch.load(plain_file, map_location="cpu")
    assert plain and all(v.dtype == torch.float32 for v in plain.values())
    assert not any(k.startswith(("module.", "_orig_mod.")) or "._orig_mod." in k for k in plain)
    encoder = load_file(str(enc_file))
    assert encoder and all(torch.equal(v, plain["encoder." + k]) for k, v in encoder.items())
    hf_config = json.loads((hf_dir / "config.json").read_text())
    assert hf_config["num_hidden_layers"] == 2
    # transformers' model from the export computes what our encoder computes with the consolidated weights
    kw = kwargs_from_hf_config(hf_config, "config.json")
    ours = VisionTransformerEncoder(kw["num_frames"], kw["img_size"], kw["patch_size"], kw["tubelet_size"],
                                    kw["in_chans"], kw["embed_dim"], kw["depth"], kw["num_heads"]).eval()
    ours.load_state_dict(encoder, strict=True)
    size = (2, 3, kw["num_frames"], kw["img_size"], kw["img_size"])
    videos = torch.randn(size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = VideoMAEModel.from_pretrained(hf_dir).eval()(videos.transpose(1, 2)).last_hidden_state
        mine = ours(videos)
    assert ((theirs - mine).norm() / mine.norm()).item() < 1e-4

    # universal: the 2-rank ZeRO-3 checkpoint loads into a 1-rank ZeRO-3 engine, whose gathered fp32 master
    # weights are the plain conversion's, bit for bit
    # (by default into a run directory of its own beside the source run, whose latest is left as it was)
    uni = call_main("convert_checkpoint.py", ["--checkpoint", ckpts, "--format", "universal"])
    assert uni.returncode == 0, uni.stderr
    assert latest.read_text().strip() == final
    uni_ckpts = cut_dir.with_name(cut_dir.name + ckpt.UNIVERSAL_SUFFIX) / "checkpoints"
    assert (uni_ckpts / "latest").read_text().strip() == final + ckpt.UNIVERSAL_SUFFIX
    assert ckpt.is_universal(uni_ckpts / (final + ckpt.UNIVERSAL_SUFFIX))
    assert ckpt.read_weights(uni_ckpts)[1]["weights"] == "fp32 master (universal checkpoint)"
    dump_file = tmp_path / "dump.pt"
    deepspeed_run(["dump", "--config", cfg, "--deepspeed_config", zero3, "--ckpt_dir", uni_ckpts, "--out",
                   dump_file], ranks=1)
    dump = torch.load(dump_file, map_location="cpu", weights_only=False)
    assert dump["load_universal"] and dump["world_size"] == 1 and dump["client"]["step"] == STEPS
    assert dump["adam_step"] == [STEPS]
    assert sorted(dump["fp32"]) == sorted(plain)
    for name, value in plain.items():
        assert torch.equal(dump["fp32"][name], value), name


def test_memory_estimate_covers_zero3_and_its_offload(tiny_config):
    from motionmae_ds.config import load_pretrain_config
    from motionmae_ds.tools import memory_estimate as me

    p, layer, gpus, nodes = 632_000_000, 5_000_000, 8, 4  # a ViT-H-sized count, 32 GPUs
    zero3 = json.loads(ZERO3.read_text())
    offload = json.loads((REPO / "ds_configs" / "zero3_offload.json").read_text())
    # ZeRO-3: bf16 weights, fp32 master, moments and gradients all partitioned (18 bytes/param over 32 GPUs)
    # plus one gathered layer in fp32 (4 bytes/param)
    assert me.model_states(p, gpus, nodes, zero3, layer)["gpu"] == 4 * layer + 18 * p // 32
    both = me.model_states(p, gpus, nodes, offload, layer)
    assert both["stage"] == 3 and both["gpu"] == 4 * layer  # weights and optimizer on the CPU
    assert both["cpu_per_node"] == int(p * max(4 * gpus, 18 / nodes) * 1.5)
    opt_only = json.loads(ZERO3.read_text())
    opt_only["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    assert me.model_states(p, gpus, nodes, opt_only, layer)["gpu"] == 4 * layer + 2 * p // 32
    # ZeRO-3's buffers: reduce bucket + prefetch bucket, bf16, x4.5 with overlap_comm
    assert me.bucket_bytes(zero3) == int((5e7 + 5e7) * 2 * 4.5)

    # the entry point on a tiny recipe: the stage and the CPU share come out of the JSON it is given
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("estimate_memory", REPO / "launch" / "estimate_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = tiny_config(model={"depth": 2})
    with contextlib.redirect_stdout(io.StringIO()):
        report = module.main(["--config", str(cfg), "--deepspeed_config",
                              str(REPO / "ds_configs" / "zero3_offload.json"),
                              "--nodes", "1", "--gpus_per_node", "2", "--frames", "4", "6"])
    tiny = load_pretrain_config(cfg)
    largest = me.largest_layer_params(tiny)
    assert largest == 48 * 3 * 16 * 16 * 2 + 48  # the patch embedding: the largest module of its own
    assert report["zero_stage"] == 3 and report["model_states_gib"] == me.gib(4 * largest)
    assert report["cpu_model_states_gib_per_node"] == me.gib(me.model_states(
        me.count_params(tiny), 2, 1, json.loads((REPO / "ds_configs" / "zero3_offload.json").read_text()),
        largest)["cpu_per_node"])
