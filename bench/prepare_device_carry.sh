#!/usr/bin/env bash
# Prepares, HERE (with network), what bench/run_on_device.sh needs on a GPU machine that has none:
#
#   .device/wheels/                     cp312 manylinux wheels of what ComfyUI 0.33.0 imports at start and
#                                       the GPU image lacks (downloaded, kept here, not carried)
#   .device/ComfyUI/                    ComfyUI 0.33.0 unpacked, for a local smoke run of the same checkout
#   .device/carry/site-packages.tar.xz  the wheels unpacked into one site-packages tree, xz-compressed
#   .device/carry/comfyui-0.33.0.tar.gz the ComfyUI source snapshot from shared/comfyui/
#
# Only .device/carry travels (run's carry: [".device/carry"]); .device/ is git-ignored. The wheels
# themselves are 94 MB (comfy-kitchen 58 MB, av 36 MB), over the 64 MiB a device call carries, so they
# travel unpacked and xz-compressed (~40 MB), without comfy-kitchen's ROCm backend (a 59 MB .so that
# NVIDIA machines never load). A wheel is a site-packages tree, so unpacking it equals `pip install
# --no-deps --target` for these packages (none has scripts or data files).
#
# The GPU image (Python 3.12, torch 2.11 + torchvision + torchaudio, transformers 5, accelerate, peft,
# einops, numpy, scipy, pillow, pyyaml, safetensors, aiohttp, psutil, ...) holds the rest. The list
# below was found by starting ComfyUI 0.33.0 in-process (as the bench does) with every package the
# image lacks blocked: startup fails without the first group; the second silences a warning per node
# and keeps optional core nodes loading. Versions: ComfyUI 0.33.0's pins, else the CI venv's.
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

device_dir=.device
wheels=$device_dir/wheels
site=$device_dir/site
carry=$device_dir/carry
rm -rf "$wheels" "$site" "$carry" "$device_dir/ComfyUI"
mkdir -p "$wheels" "$site" "$carry"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$wheels" "${REQUIRED_WHEELS[@]}" "${QUIET_WHEELS[@]}" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2 || true)
expected=$(( ${#REQUIRED_WHEELS[@]} + ${#QUIET_WHEELS[@]} ))
found=$(ls "$wheels"/*.whl | wc -l)
if [[ "$found" -ne "$expected" ]]; then
    echo "prepare_device_carry: expected $expected wheels, got $found in $wheels" >&2
    exit 1
fi

python3 - "$wheels" "$site" <<'EOF'
import sys, zipfile
from pathlib import Path
wheels, site = Path(sys.argv[1]), Path(sys.argv[2])
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        if any(".data/" in name for name in archive.namelist()):
            raise SystemExit(f"{wheel.name} has a .data folder: install it with pip instead of unpacking")
        archive.extractall(site)
EOF
rm -rf "$site/comfy_kitchen/backends/hip"  # ROCm only
find "$site" -name "*.so" -exec chmod 755 {} +
XZ_OPT="-6 -T0" tar -cJf "$carry/site-packages.tar.xz" -C "$site" .
rm -rf "$site"
cp "$tarball" "$carry/comfyui-0.33.0.tar.gz"
(cd "$carry" && sha256sum site-packages.tar.xz comfyui-0.33.0.tar.gz > SHA256SUMS)

tar -xzf "$tarball" -C "$device_dir"  # -> .device/ComfyUI, for a local smoke run of the same checkout
test -f "$device_dir/ComfyUI/main.py"

carried=$(du -sb "$carry" | cut -f1)
echo "prepare_device_carry: $found wheels ($(du -sh "$wheels" | cut -f1)); carry $((carried / 1048576)) MiB in $carry"
if (( carried > 60 * 1048576 )); then
    echo "prepare_device_carry: WARNING: $carry is over 60 MiB; with the working tree it may pass the 64 MiB a call carries" >&2
fi
