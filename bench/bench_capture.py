"""All-layer hidden-state capture vs the plain backbone forward: time and peak memory, side by side.

A random mid-size Qwen2.5-VL (language model: 8 decoder layers, width 1024; a tiny vision
tower) is written to a temp folder, loaded through ``load_mllm`` in fp32 on the CPU and fed
one joint sequence (a 448x448 reference = 256 image tokens + a long instruction, ~1.3k
tokens). Variants, all on the same prepared inputs:

* ``forward``: the backbone (``model.model``) with ``use_cache=False``, nothing captured;
* ``capture``: the same forward with the pack's hooks filling a preallocated
  ``[batch, layers, tokens, width]`` tensor (what ``encode_joint`` runs);
* ``hidden_states``: transformers' ``output_hidden_states=True`` tuple, then ``torch.stack``
  into the same layout (what a naive implementation would do).

Time: median of N alternating runs. Memory: each variant runs in a fresh subprocess; a
thread samples the process RSS (``/proc/self/statm``) every 0.5 ms during the forward;
reported = peak RSS during the forward minus RSS just before it (the forward's working
memory, including the returned tensors). The children run with glibc's mmap threshold fixed
at 128 KiB (``MALLOC_MMAP_THRESHOLD_``), so every tensor buffer is mmap'd and given back on
free and RSS tracks live bytes instead of allocator pools. tracemalloc does not see torch's
allocator, hence RSS.

Run: ``python bench/bench_capture.py [--tokens 1300] [--repeats 3]``. Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dla_core.mllm import capture_forward, load_mllm  # noqa: E402
from dla_tiny import build_tiny_qwen25vl  # noqa: E402

WIDTH, DECODERS, IMAGE_SIDE = 1024, 8, 448
VARIANTS = ("forward", "capture", "hidden_states")


def _build(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        build_tiny_qwen25vl(folder, seed=0, hidden_size=WIDTH, num_layers=DECODERS, max_pixels=IMAGE_SIDE**2)


def _inputs(mllm, tokens: int) -> dict:
    from PIL import Image

    processor = mllm.processor
    reference = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), (120, 80, 40))
    words = " ".join(["the small dog from the picture runs on a sunny beach"] * 200)
    image_tokens = (IMAGE_SIDE // 28) ** 2
    prompt = words[: max(16, tokens - image_tokens - 40)]  # byte-level tokenizer: 1 char ~ 1 token
    content = [{"type": "image"}, {"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    encoded = processor(text=[text], images=[reference], return_tensors="pt")
    return {key: encoded[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}


def _run(mllm, inputs: dict, variant: str):
    layers = tuple(range(mllm.spec.num_layers))
    if variant == "capture":
        return capture_forward(mllm, inputs, layers)
    with torch.inference_mode():
        if variant == "forward":
            return mllm.model.model(**inputs, use_cache=False).last_hidden_state
        states = mllm.model.model(**inputs, use_cache=False, output_hidden_states=True).hidden_states
        return torch.stack(states, dim=1)  # [batch, layers, tokens, width]


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(folder: Path, tokens: int, variant: str) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    mllm = load_mllm(folder, dtype="fp32")
    inputs = _inputs(mllm, tokens)
    _run(mllm, inputs, "forward")  # warm-up: lazy inits, allocator pools, kernels
    import gc

    gc.collect()
    before = _rss()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = _run(mllm, inputs, variant)
    peak[0] = max(peak[0], _rss())
    done.set()
    sampler.join()
    print(
        json.dumps(
            {
                "variant": variant,
                "peak_delta": peak[0] - before,
                "result_bytes": result.numel() * result.element_size(),
                "tokens": int(inputs["input_ids"].shape[1]),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1300, help="approximate sequence length")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (alternating)")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "dla-bench-qwen25vl-1024x8")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _build(args.folder)
    if args.memory_child:
        _memory_child(args.folder, args.tokens, args.memory_child)
        return

    mllm = load_mllm(args.folder, dtype="fp32")
    inputs = _inputs(mllm, args.tokens)
    tokens = int(inputs["input_ids"].shape[1])
    for variant in VARIANTS:  # warm-up
        _run(mllm, inputs, variant)
    times = {variant: [] for variant in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            start = time.perf_counter()
            _run(mllm, inputs, variant)
            times[variant].append(time.perf_counter() - start)
    median = {variant: statistics.median(values) for variant, values in times.items()}

    memory = {}
    for variant in VARIANTS:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--tokens",
                str(args.tokens),
                "--folder",
                str(args.folder),
                "--memory-child",
                variant,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"},
        )
        memory[variant] = json.loads(child.stdout.strip().splitlines()[-1])

    mib = 2**20
    captured = memory["capture"]["result_bytes"]
    print(
        f"Qwen2.5-VL LM {DECODERS} layers x width {WIDTH}, fp32, CPU ({torch.get_num_threads()} threads), "
        f"{tokens} tokens, {mllm.spec.num_layers} captured layers = {captured / mib:.1f} MiB"
    )
    print(f"{'variant':<15}{'time (s)':>10}{'x forward':>11}{'peak RSS delta (MiB)':>22}{'x forward':>11}")
    base_time, base_mem = median["forward"], memory["forward"]["peak_delta"]
    for variant in VARIANTS:
        delta = memory[variant]["peak_delta"]
        print(
            f"{variant:<15}{median[variant]:>10.3f}{median[variant] / base_time:>11.3f}"
            f"{delta / mib:>22.1f}{delta / max(base_mem, 1):>11.2f}"
        )
    print(
        f"memory goal: capture <= forward + captured tensor = {(base_mem + captured) / mib:.1f} MiB "
        f"-> capture used {memory['capture']['peak_delta'] / mib:.1f} MiB"
    )
    print(f"time goal: capture <= 1.05x forward -> {median['capture'] / base_time:.3f}x")


if __name__ == "__main__":
    main()
