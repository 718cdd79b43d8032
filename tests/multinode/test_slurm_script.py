"""The SLURM script: valid bash, the command it renders for 4 nodes x 8 GPUs, and a one-node job under stub SLURM
commands stopped by its early SIGUSR1 and by scancel."""
import os
import signal
import subprocess

from launchers import REPO, SBATCH, render_sbatch, rendered_commands, slurm_stubs, srun_task

from motionmae_ds.config import batch_layout, load_pretrain_config
from motionmae_ds.runtime.ds_config import fill_batch, load_ds_config
from tests.helpers import ZERO2, free_port, read_log, start, wait_for

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


def test_sbatch_checkpoints_on_its_early_sigusr1_and_on_scancel(tiny_config, tmp_path):
    # one node with one rank and a loader worker; SLURM's commands are stubs (launchers.slurm_stubs). SIGUSR1 goes
    # to the batch shell only (--signal=B:USR1): the ranks checkpoint, exit 75 and the job requeues itself.
    # scancel signals every process of the job with SIGTERM: the ranks checkpoint too, the job is not requeued
    cfg = tiny_config(schedule={"epochs": 20, "warmup_epochs": 1, "batch_size": 2}, data={"num_workers": 1},
                      run={"save_every_epochs": 20, "save_every_steps": 0})
    record = tmp_path / "requeued.txt"
    stubs = slurm_stubs(tmp_path / "bin", record)
    for case in ("usr1", "scancel"):
        out = tmp_path / case
        env = {"PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost",
               "SLURM_NNODES": "1", "GPUS_PER_NODE": "1", "CONFIG": str(cfg), "DS_CONFIG": str(ZERO2),
               "OUTPUT_DIR": str(out), "MOTIONMAE_MASTER_PORT": str(free_port())}
        proc = start(["bash", str(SBATCH)], tmp_path / f"{case}.txt", env)
        try:
            wait_for(lambda out=out: any(r["step"] >= 2 for r in read_log(out)), 300, "training steps", proc)
            if case == "usr1":
                os.kill(proc.pid, signal.SIGUSR1)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
            code = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        text = (tmp_path / f"{case}.txt").read_text()
        assert code == 75, text[-3000:]
        assert "stopped: stopped on request" in text and "Traceback" not in text, text[-3000:]
        ckpts = out / "checkpoints"
        tag = (ckpts / "latest").read_text().strip()
        assert (ckpts / tag / "mp_rank_00_model_states.pt").is_file()
        assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]
        requeued = record.read_text().splitlines() if record.exists() else []
        assert requeued == ["requeue 4242"], (case, requeued)  # the early signal requeues, the cancel does not
