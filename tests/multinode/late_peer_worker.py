"""Run by test_rank_failure under `deepspeed --num_gpus 2` with a short collective timeout: a ZeRO-2 engine built
the way the trainers build it (our init_distributed, then deepspeed.initialize), then one all-reduce on the
group ZeRO's optimizer communicates on. Rank 1 joins it only after --late seconds; rank 0 writes to --out
how long it waited and whether the collective raised."""
import argparse
import json
import os
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from motionmae_ds.runtime.distributed import init_distributed

p = argparse.ArgumentParser()
p.add_argument("--local_rank", type=int, default=0)
p.add_argument("--late", type=float, required=True)
p.add_argument("--out", required=True)
args = p.parse_args()

init_distributed()
model = torch.nn.Linear(4, 4)
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
          "zero_optimization": {"stage": 2}}
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config)
group = engine.optimizer.dp_process_group
if dist.get_rank() == 1:
    time.sleep(args.late)
t0 = time.time()
try:
    dist.all_reduce(torch.ones(4), group=group)
    error = None
except Exception as exc:  # the timeout under test
    error = str(exc).splitlines()[0][:300]
if dist.get_rank() == 0:
    # written under another name, then renamed: the test polls for the file and reads it at once
    Path(args.out + ".tmp").write_text(json.dumps({"waited": time.time() - t0, "error": error}))
    os.replace(args.out + ".tmp", args.out)
os._exit(0)
