#!/usr/bin/env bash
# The GPU run of bench/gpu_real_scale.py on a lent machine without network (one H200: Python 3.12 with
# torch, torchvision, torchaudio, transformers, accelerate and peft already there).
#
# Before, HERE:  bash bench/prepare_device_carry.sh        (fills the git-ignored .device/carry, ~55 MiB)
# On the device: run(command="bash bench/run_on_device.sh", carry=[".device/carry"], timeout_s=600)
#
# It unpacks the carried site-packages (ComfyUI 0.33.0's missing requirements) and ComfyUI itself under
# /tmp, checks the GPU, then runs the bench at full size: results JSON and the log land in $OUT (or
# bench/results/ when $OUT is unset). Extra arguments go to the bench (e.g. --repeats 1, --simulate-vram-gb 0).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
carry="$repo_root/.device/carry"
out="${OUT:-$repo_root/bench/results}"
stage=/tmp/dla-device
mkdir -p "$out" "$stage"
start=$SECONDS

if [[ ! -f "$carry/site-packages.tar.xz" || ! -f "$carry/comfyui-0.33.0.tar.gz" ]]; then
    echo "run_on_device: $carry is incomplete; run bench/prepare_device_carry.sh here and carry .device/carry." >&2
    exit 2
fi
(cd "$carry" && sha256sum -c --quiet SHA256SUMS)

# Python's own tarfile/lzma: the image may have no xz binary.
python3 - "$carry" "$stage" <<'EOF'
import sys, tarfile
from pathlib import Path
carry, stage = Path(sys.argv[1]), Path(sys.argv[2])
for name, target in (("site-packages.tar.xz", stage / "site"), ("comfyui-0.33.0.tar.gz", stage)):
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(carry / name) as archive:
        archive.extractall(target, filter="data")
EOF
export PYTHONPATH="$stage/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
echo "run_on_device: unpacked in $((SECONDS - start)) s"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 - <<'EOF'
import importlib, torch
assert torch.cuda.is_available(), "torch sees no CUDA GPU"
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for name in ("transformers", "torchvision", "torchaudio", "comfy_kitchen", "comfy_aimdo", "av", "torchsde", "pydantic"):
    module = importlib.import_module(name)
    print(f"  {name} {getattr(module, '__version__', '?')} from {module.__file__}")
import comfy_kitchen
print("  comfy_kitchen backends:", {k: v["available"] for k, v in comfy_kitchen.list_backends().items()})
EOF

set -o pipefail
python3 bench/gpu_real_scale.py --comfyui "$stage/ComfyUI" --device cuda --out "$out/gpu_real_scale.json" "$@" 2>&1 \
    | tee "$out/gpu_real_scale.log"
echo "run_on_device: done in $((SECONDS - start)) s; results in $out/gpu_real_scale.json"
