"""The SLURM script: valid bash, and the command it renders for 4 nodes x 8 GPUs."""
import subprocess

from launchers import REPO, SBATCH, render_sbatch, rendered_commands, srun_task

from motionmae_ds.config import batch_layout, load_pretrain_config
from motionmae_ds.runtime.ds_config import fill_batch, load_ds_config

HOSTS = ["gpu01", "gpu02", "gpu03", "gpu04"]


def test_bash_syntax():
    res = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_renders_srun_for_4_nodes_x_8_gpus(tmp_path):
    out = tmp_path / "vitl"
    res = render_sbatch(HOSTS, gpus=8, extra=["--set", "run.log_every=50"], OUTPUT_DIR=out, SLURM_JOB_ID="1234")
    assert res.returncode == 0, res.stderr
    assert (out / "hostfile.slurm").read_text() == "".join(f"{h} slots=8\n" for h in HOSTS)
    srun, per_node = rendered_commands(res.stdout)
    assert srun[:6] == ["srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                        "--cpu-bind=none"]
    launcher = ["--hostfile", str(out / "hostfile.slurm"), "--no_ssh", "--master_addr", "gpu01",
                "--master_port", str(29500 + 1234 % 1000), "--num_gpus", "8"]
    train = ["launch/pretrain.py", "--deepspeed_config", "ds_configs/zero2_vitl_32gpu.json",
             "--config", "configs/pretrain_ssv2_vit_large_32f.yaml", "--output_dir", str(out),
             "--set", "run.log_every=50"]
    assert srun_task(srun)[4:] == ["deepspeed", *launcher, *train]
    assert per_node == [["deepspeed", "--node_rank", str(n), *launcher, *train] for n in range(4)]

    # the task srun runs on node 2 becomes node 2's command (deepspeed swapped for echo)
    task = srun_task(srun)
    task[task.index("deepspeed")] = "echo"
    env = {"SLURM_NODEID": "2", "PATH": "/usr/bin:/bin"}
    echoed = subprocess.run(task, env=env, capture_output=True, text=True, cwd=REPO, timeout=30)
    assert echoed.stdout.split() == per_node[2][1:]

    # the recipe it starts: 512 = 8 x 2 x 32 at the shipped micro batch, 16 x 1 x 32 at the docs' choice
    cfg = load_pretrain_config(REPO / "configs" / "pretrain_ssv2_vit_large_32f.yaml")
    assert cfg.model.name == "vit_large" and cfg.model.num_frames == 32 and cfg.model.img_size == 224
    assert cfg.model.grad_checkpointing and batch_layout(cfg, 32) == (8, 2, 512)
    fast = load_pretrain_config(REPO / "configs" / "pretrain_ssv2_vit_large_32f.yaml", ["schedule.batch_size=16"])
    assert batch_layout(fast, 32) == (16, 1, 512)
    ds = fill_batch(load_ds_config(REPO / "ds_configs" / "zero2_vitl_32gpu.json"), 16, 1, 32)
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 2 and ds["train_batch_size"] == 512


def test_bad_node_lists_are_one_line_errors(tmp_path):
    res = subprocess.run(["bash", str(SBATCH), "--dry_run"], cwd=REPO, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "OUTPUT_DIR": str(tmp_path / "o")}, timeout=30)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "MOTIONMAE_HOSTS" in res.stderr
    res = render_sbatch(HOSTS, gpus=8, OUTPUT_DIR=tmp_path / "o", SLURM_NNODES="2")
    assert res.returncode == 2 and "SLURM_NNODES=2 but the node list has 4 hosts" in res.stderr
    res = render_sbatch(HOSTS, gpus=8, OUTPUT_DIR=tmp_path / "o", CONFIG="configs/nope.yaml")
    assert res.returncode == 2 and "configs/nope.yaml: file not found" in res.stderr
