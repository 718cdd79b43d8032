#!/usr/bin/env bash
# Wheels a PyTorch-only GPU machine without network needs to run this project (bench/gpu_check.py, training):
# DeepSpeed and the pure-Python dependencies such an image lacks, PyAV, decord2 and torchcodec, for CPython
# 3.12 on x86-64 Linux, into .whl/ (git-ignored). Run it here, where pip reaches the registry:
#
#     bash bench/prepare_gpu_wheels.sh            # or: WHEELS=/some/dir PY=3.12 bash bench/prepare_gpu_wheels.sh
#
# On the machine (the device tool: name .whl in `carry`), first thing in the command:
#
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#       && export PYTHONPATH=/tmp/site:$PWD
#
# --no-deps: the machine's own torch, numpy, einops, msgpack, ninja, packaging, psutil, py-cpuinfo, tqdm and
# nvidia-ml-py (its KINDS.md list) stay in charge; only what it lacks comes from here. DeepSpeed ships no
# wheel, so its sdist is built into a pure-Python one here (its CUDA ops JIT-build on the GPU with ninja/nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${WHEELS:-.whl}
py=${PY:-3.12}
# torchcodec is built against one torch minor: 0.11 pairs with torch 2.11 (the H200 image's); see torchcodec's
# compatibility table before changing either
torchcodec=${TORCHCODEC_VERSION:-0.11.0}
mkdir -p "$out"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
binary() {  # wheels for the target interpreter, whatever this machine runs
  python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    "${platforms[@]}" -d "$out" "$@"
}
# DeepSpeed (sdist only on PyPI) -> a py3-none-any wheel, no ops prebuilt
DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w "$out" deepspeed==0.19.8
# its dependencies that the image lacks: hjson, pydantic 2 with its compiled core and small helpers
binary hjson==3.1.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
# WebDataset tar shards (data.shards; requirements.txt pins it): pure Python, with its brace expansion
binary webdataset==1.0.2 braceexpand==0.1.7
# video decoders (requirements.txt): PyAV bundles FFmpeg (36 MB) and also encodes the synthetic test set; torchcodec
# needs the machine's FFmpeg libraries; decord2 (27 MB) is opt-in, since all three together (67 MB) pass the 64 MiB
# a device call carries: DECODERS="av torchcodec decord2"
declare -A pins=([av]="av==18.1.0" [decord2]="decord2==3.4.0" [torchcodec]="torchcodec==$torchcodec")
for name in ${DECODERS:-av torchcodec}; do
  binary "${pins[$name]:?unknown decoder $name (av, decord2, torchcodec)}"
done
# torchcodec's CUDA wheel links NVIDIA NPP (color conversion and its core), which a PyTorch image lacks: only those
# two libraries (10 MB) from NPP's wheel (150 MB) into $out/npp; bench/gpu_session.sh puts them on the library path
npp=$(mktemp -d)
python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  "${platforms[@]}" -d "$npp" "nvidia-npp==${NPP_VERSION:-13.2.0.93}"
mkdir -p "$out/npp"
unzip -o -j -q "$npp"/nvidia_npp-*.whl 'nvidia/cu13/lib/libnppicc.so.*' 'nvidia/cu13/lib/libnppc.so.*' -d "$out/npp"
rm -rf "$npp"
ls -l "$out" "$out/npp"
du -sh "$out"
