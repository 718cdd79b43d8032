#!/usr/bin/env bash
# A short GPU lease in one command (docs/BENCHMARKS.md, "GPU check"): installs the carried wheels, lets torchcodec
# find FFmpeg and NPP, then runs phases, each under its own time limit so that a slow one cannot eat the rest:
#   check_main         bench/gpu_check.py --part main: the gpu tests, ZeRO-2 bf16 steps of ViT-B/L (ours, HF),
#                      the loader, NVDEC against the CPU decode, the device finishing
#   pretrain_demo      the README's main job through the real launcher on CUDA (2 epochs of the demo)
#   pretrain_vit_base  ViT-B 16x224 pretraining through the launcher on the synthetic MP4 set: the trainer's own
#                      step rate and data wait, beside the engine-only rate of check_main
#   finetune_demo      a finetune of pretrain_demo with its test evaluation, then evaluate.py on the result
#   check_compile      bench/gpu_check.py --part compile: the torch.compile cases (a minute or more each)
# GPU_SESSION_PHASES="check_main pretrain_demo" picks some (default: all, in the order above). Everything goes to
# OUT_DIR as a few files (the device tool returns 8): machine.txt, phases.txt (name and exit status), session.log,
# the check's JSON, and runs.tgz (the run directories without their checkpoints).
#
#     bash bench/prepare_gpu_wheels.sh                     # here, with network: .whl/ (wheels, NPP libraries)
#     bash bench/gpu_session.sh "$OUT"                     # there, in the repository root (device tool: carry .whl)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/gpu_session.sh OUT_DIR}
mkdir -p "$out"
runs=${GPU_SESSION_RUNS:-/tmp/gpu_session_runs}
export out runs
t0=$SECONDS
say() { echo "[gpu_session +$((SECONDS - t0)) s] $*"; }
phase() {  # phase NAME LIMIT_S FUNCTION: runs FUNCTION under a time limit, its output appended to session.log
  local name=$1 limit=$2
  say "$name: start (limit ${limit} s)"
  export -f "$3"
  timeout -k 15 "$limit" bash -c "$3" >> "$out/session.log" 2>&1
  local rc=$?
  say "$name: exit $rc"
  echo "$name $rc" >> "$out/phases.txt"
  # the runs' logs, metrics and pictures, without their checkpoints (a ViT-B one is over a GB)
  tar -czf "$out/runs.tgz" --exclude=checkpoints -C "$(dirname "$runs")" "$(basename "$runs")" 2>/dev/null
  return 0
}

if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl; then
  # a wheel is a zip of what goes on the path: unpacked, the lease is not lost to an installer problem
  say "pip could not install .whl/*.whl: unpacking them into /tmp/site instead"
  for w in .whl/*.whl; do python3 -m zipfile -e "$w" /tmp/site || { say "cannot unpack $w"; exit 3; }; done
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# the launcher as a module: the same code as the `deepspeed` command, whichever way the wheels went in
deepspeed() { python3 -m deepspeed.launcher.runner "$@"; }
export -f deepspeed
# torchcodec (the CUDA wheel) opens FFmpeg by its plain sonames and links NVIDIA NPP; such an image has neither.
# PyAV's wheel bundles FFmpeg under hashed names: links with the plain names point at those files. NPP's two
# libraries come from .whl/npp (bench/prepare_gpu_wheels.sh). CUDA's NVRTC is the image's (torch's nvidia packages).
ff=/tmp/ffmpeg_sonames
mkdir -p "$ff"
for so in avutil.so.60 avcodec.so.62 avformat.so.62 avdevice.so.62 avfilter.so.11 swscale.so.9 swresample.so.6; do
  f=$(ls /tmp/site/av.libs/lib"${so%%.so.*}"-*.so.* 2>/dev/null | head -1)
  [ -n "$f" ] && ln -sf "$f" "$ff/lib$so"
done
cp .whl/npp/lib*.so.* "$ff/" 2>/dev/null
nv=$(python3 -c "import glob, os, torch; print(':'.join(sorted({os.path.dirname(p) for p in glob.glob(os.path.join(
os.path.dirname(os.path.dirname(torch.__file__)), 'nvidia', '**', 'lib*.so*'), recursive=True)})))")
export LD_LIBRARY_PATH=$ff${nv:+:$nv}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, deepspeed, av; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'av',
av.__version__, torch.cuda.get_device_name(0))"
  python3 -c "import torchcodec; print('torchcodec', torchcodec.__version__)" 2>&1 | tail -1
  nproc
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

check_main() { python3 bench/gpu_check.py --full --part main --out "$out/gpu_check.json"; }
pretrain_demo() {
  deepspeed --num_gpus 1 launch/pretrain.py --deepspeed_config ds_configs/zero2.json \
    --output_dir "$runs/pretrain_demo" --set schedule.epochs=2
}
finetune_demo() {
  deepspeed --num_gpus 1 launch/finetune.py --deepspeed_config ds_configs/zero2.json \
    --output_dir "$runs/finetune_demo" --set schedule.epochs=2 "finetune.init=$runs/pretrain_demo/checkpoints" \
    && deepspeed --num_gpus 1 launch/evaluate.py --checkpoint "$runs/finetune_demo" --split test
}
pretrain_vit_base() {
  deepspeed --num_gpus 1 launch/pretrain.py --deepspeed_config ds_configs/zero2.json \
    --config configs/pretrain_ssv2_vit_base.yaml --output_dir "$runs/pretrain_vit_base" --set data.synthetic=true \
    data.synthetic_videos=32 data.synthetic_frames=64 data.synthetic_size=256 data.sampling_rate=4 \
    data.num_repeats=4 data.num_workers=12 schedule.batch_size=8 schedule.total_batch_size=32 schedule.epochs=6 \
    schedule.warmup_epochs=1 run.log_every=1 run.save_every_epochs=6
}
check_compile() { python3 bench/gpu_check.py --full --part compile --skip_tests --out "$out/gpu_check_compile.json"; }

# NAME:LIMIT_S, in order of value: a lease cut short keeps the first ones
declare -A limits=([check_main]=270 [pretrain_demo]=100 [finetune_demo]=150 [pretrain_vit_base]=120
                   [check_compile]=200)
for name in ${GPU_SESSION_PHASES:-check_main pretrain_demo pretrain_vit_base finetune_demo check_compile}; do
  [ -n "${limits[$name]:-}" ] || { say "unknown phase $name"; exit 2; }
  phase "$name" "${limits[$name]}" "$name"
done
say "done"
