#!/usr/bin/env bash
# Prepares what bench/run_on_device.sh needs on a GPU machine that has no network (run it HERE, with network):
#
#   .device/wheels/   cp312 manylinux wheels of what ComfyUI 0.33.0 imports at start and the GPU image lacks
#   .device/ComfyUI/  ComfyUI 0.33.0, unpacked from the source snapshot in shared/comfyui/
#
# Both are git-ignored (.device/ in .gitignore) and travel to the device as a carried path.
# The GPU image (Python 3.12, torch 2.11, torchvision, torchaudio, transformers 5, accelerate, peft, einops,
# numpy, scipy, pillow, pyyaml, safetensors, aiohttp...) already holds the rest; each wheel below was found
# missing by starting ComfyUI in-process with those packages blocked (the startup fails without the first
# group; the second only silences warnings and optional core nodes). Versions: what ComfyUI 0.33.0's
# requirements.txt pins, else the ones the CI venv of the current row resolved.
#
# Usage: bash bench/prepare_device_carry.sh [COMFYUI_TARBALL]
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
tarball="${1:-}"
if [[ -z "$tarball" ]]; then
    for candidate in /work/shared/comfyui/comfyui-0.33.0.tar.gz "$repo_root/../shared/comfyui/comfyui-0.33.0.tar.gz" \
        "$repo_root/shared/comfyui/comfyui-0.33.0.tar.gz"; do
        if [[ -f "$candidate" ]]; then tarball="$candidate"; break; fi
    done
fi
if [[ -z "$tarball" || ! -f "$tarball" ]]; then
    echo "prepare_device_carry: no comfyui-0.33.0.tar.gz found; pass its path as the first argument." >&2
    exit 2
fi

REQUIRED_WHEELS=(  # ComfyUI 0.33.0 fails to start without these
    comfy-aimdo==0.4.13
    comfy-kitchen==0.2.31
    av==18.1.0
    torchsde==0.2.6
    trampoline==0.1.2
    truststore==0.10.5
)
QUIET_WHEELS=(  # pydantic-settings reads ComfyUI's pyproject.toml (one warning per node otherwise)
    pydantic==2.14.4
    pydantic-core==2.50.5
    pydantic-settings==2.16.3
    python-dotenv==1.2.4
    typing-inspection==0.4.5
    annotated-types==0.8.0
)

wheels=.device/wheels
rm -rf "$wheels" .device/ComfyUI
mkdir -p "$wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$wheels" "${REQUIRED_WHEELS[@]}" "${QUIET_WHEELS[@]}"

tar -xzf "$tarball" -C .device  # -> .device/ComfyUI
test -f .device/ComfyUI/main.py

echo "prepare_device_carry: $(ls "$wheels" | wc -l) wheels ($(du -sh "$wheels" | cut -f1)), ComfyUI $(du -sh .device/ComfyUI | cut -f1)"
echo "total carried: $(du -sh .device | cut -f1) (the device's limit is 64 MiB with the working tree)"
