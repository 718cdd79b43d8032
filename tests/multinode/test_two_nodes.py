"""Acceptance: a real 2-"node" job on this machine, started exactly as the SLURM script starts it on each
node, then resumed by a single-node 2-rank run."""
import json
import shutil

import torch
from launchers import VITL_JSON, render_sbatch, rendered_commands, srun_task, wait_exit

from tests.helpers import free_port, launch, read_log, start


def test_two_launchers_make_one_world_and_resume_on_one_node(tiny_config, tmp_path):
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_epochs": 1, "keep_last": 0, "visualize": True})
    out = tmp_path / "run"
    dry = render_sbatch(["localhost", "127.0.0.1"], gpus=1, CONFIG=cfg, DS_CONFIG=VITL_JSON, OUTPUT_DIR=out,
                        MOTIONMAE_MASTER_ADDR="127.0.0.1", MOTIONMAE_MASTER_PORT=free_port())
    assert dry.returncode == 0, dry.stderr
    assert (out / "hostfile.slurm").read_text() == "localhost slots=1\n127.0.0.1 slots=1\n"
    srun, per_node = rendered_commands(dry.stdout)
    for node, argv in enumerate(per_node):
        assert argv[:3] == ["deepspeed", "--node_rank", str(node)] and "--no_ssh" in argv
        assert argv[argv.index("--master_addr") + 1] == "127.0.0.1"

    # what srun would run on node 0 and node 1; SLURM_NODEID picks the node rank inside the task
    task = srun_task(srun)
    nodes = [start(task, tmp_path / f"node{n}.log", {"SLURM_NODEID": str(n)}) for n in (0, 1)]
    codes = [wait_exit(p, timeout=600)[0] for p in nodes]
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)

    # one world of 2 ranks over 2 launchers: each launcher started 1 local rank, global ranks 0 and 1
    for n, log in enumerate(logs):
        assert f"nnodes=2, num_local_procs=1, node_rank={n}" in log
        assert "dist_world_size=2" in log
        assert "{'localhost': [0], '127.0.0.1': [1]}" in log  # global_rank_mapping
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["total_batch"] == 4
    assert info["ds_config"]["zero_optimization"]["overlap_comm"] is True  # the 32-GPU JSON ran
    # 12 videos / 2 ranks / micro batch 2 = 3 steps an epoch; only rank 0 writes the log (no duplicated steps)
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4, 5, 6]
    assert len(list((out / "tb").iterdir())) == 1
    assert sorted(p.name for p in (out / "vis").iterdir()) == ["step00000003.png", "step00000006.png"]
    tag_dir = out / "checkpoints" / "step00000003"
    assert (out / "checkpoints" / "latest").read_text() == "step00000006"
    # every rank wrote its ZeRO-2 optimizer shard into the shared directory
    assert sorted(p.name for p in tag_dir.iterdir()) == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "mp_rank_00_model_states.pt"]
    blob = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert blob["world_size"] == 2 and blob["step"] == 3
    assert blob["dp_world_size"] == 2

    # epoch 0's checkpoint resumes on one node with 2 ranks (same data-parallel size): as if the job had been
    # stopped after it, epoch 1's checkpoint goes and `latest` names step 3 again
    shutil.rmtree(out / "checkpoints" / "step00000006")
    (out / "checkpoints" / "latest").write_text("step00000003")
    res = launch("pretrain.py", ["--config", cfg, "--deepspeed_config", VITL_JSON, "--output_dir", out], ranks=2,
                 timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step00000003'}: epoch 1, step 3" in res.stdout
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4, 5, 6]
    assert (out / "checkpoints" / "latest").read_text() == "step00000006"
