"""The files a test ComfyUI runs on: the tiny models tree and a ``--base-directory`` with the pack in it.

* :func:`build_tiny_models_tree` writes a ComfyUI ``models/`` tree with tiny random models:
  ``diffusion_models/tiny_flux.safetensors`` (FLUX, BFL layout), ``vae/tiny_ae.safetensors``,
  ``loras/tiny_flux_lora.safetensors``, ``mllm/tiny-internvl`` (+ ``mllm/tiny-qwen25vl``) and
  ``dla/tiny_dla.safetensors`` (made with ``init-dla``; plus checkpoints for another MLLM / another
  width for error tests). :func:`cached_tiny_models_tree` keeps one per FLUX width under a cache folder
  (``DLA_TINY_MODELS_CACHE`` in the tests; ``dla_tiny.cache`` rebuilds it when a builder's source changes).
* :func:`make_comfy_base_directory` -- a ``--base-directory`` for ComfyUI: ``custom_nodes/`` with a
  symlink to this repository (:data:`PACK_DIR_NAME`), ``models/`` -> the tiny tree, ``input/`` with a
  reference image, and an ``extra_model_paths.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[3]
PACK_DIR_NAME = "comfyui-dla-subject"  # the pack's folder under custom_nodes/, as users clone it

TINY_FLUX = "tiny_flux.safetensors"
TINY_VAE = "tiny_ae.safetensors"
TINY_LORA = "tiny_flux_lora.safetensors"
TINY_MLLM = "tiny-internvl"
TINY_OTHER_MLLM = "tiny-qwen25vl"
TINY_DLA = "tiny_dla.safetensors"
TINY_DLA_OTHER_MLLM = "tiny_dla_for_qwen25vl.safetensors"
TINY_DLA_OTHER_WIDTH = "tiny_dla_wrong_width.safetensors"
REFERENCE_IMAGE = "reference.png"
EXTRA_DLA_DIR = "extra_dla"  # registered through extra_model_paths.yaml, must survive the pack's registration


def tiny_names() -> SimpleNamespace:
    """File and folder names of the tiny models (as the loaders' dropdowns show them)."""
    return SimpleNamespace(
        flux=TINY_FLUX,
        vae=TINY_VAE,
        lora=TINY_LORA,
        mllm=TINY_MLLM,
        other_mllm=TINY_OTHER_MLLM,
        dla=TINY_DLA,
        dla_other_mllm=TINY_DLA_OTHER_MLLM,
        dla_other_width=TINY_DLA_OTHER_WIDTH,
        reference=REFERENCE_IMAGE,
    )


def tiny_flux_width(comfy_path: Path | None) -> int:
    """Width of the tiny FLUX for this ComfyUI: 256 where ComfyUI reads it from the weights, else 3072.

    ComfyUI 0.3.64 fixes FLUX's hidden size at 3072 whatever the file holds; newer ComfyUI derives
    width and head count from ``img_in``/``txt_in``. Decided from the detection code itself, so a
    ComfyUI that changes it again picks the right tiny model.
    """
    from dla_tiny.flux import FLUX_HIDDEN

    if comfy_path is None:
        return FLUX_HIDDEN
    detection = Path(comfy_path) / "comfy" / "model_detection.py"
    text = detection.read_text(encoding="utf-8") if detection.is_file() else ""
    derives = 'dit_config["hidden_size"] = w.shape[0]' in text
    return 256 if derives else FLUX_HIDDEN


def build_tiny_models_tree(models_dir: str | Path, flux_hidden: int | None = None) -> Path:
    """Write the tiny models in ComfyUI's ``models/`` layout under ``models_dir``; returns it.

    ``flux_hidden``: width of the tiny FLUX (default 3072, the only width ComfyUI 0.3.64 loads).
    """
    from dla_core.checkpoint import init_dla, save_dla
    from dla_core.cli import main as dla_cli
    from dla_core.spec import MLLMSpec, read_mllm_spec
    from dla_tiny.flux import build_tiny_flux_comfy, build_tiny_flux_lora, build_tiny_flux_vae
    from dla_tiny.mllm import build_tiny_internvl, build_tiny_qwen25vl

    models = Path(models_dir)
    flux_kwargs = {} if flux_hidden is None else {"hidden": flux_hidden}
    flux = build_tiny_flux_comfy(models / "diffusion_models" / TINY_FLUX, seed=0, **flux_kwargs)
    build_tiny_flux_vae(models / "vae" / TINY_VAE, seed=0)
    build_tiny_flux_lora(models / "loras" / TINY_LORA, flux, rank=4)
    mllm = build_tiny_internvl(models / "mllm" / TINY_MLLM, seed=0)
    other = build_tiny_qwen25vl(models / "mllm" / TINY_OTHER_MLLM, seed=0)
    (models / "dla").mkdir(parents=True, exist_ok=True)
    for folder, name in ((mllm, TINY_DLA), (other, TINY_DLA_OTHER_MLLM)):
        code = dla_cli(["init-dla", "--mllm", str(folder), "--target", "flux", "--out", str(models / "dla" / name)])
        if code != 0:
            raise RuntimeError(f"init-dla failed for {folder}")
    give_dla_a_learned_null(models / "dla" / TINY_DLA, seed=5)
    spec = read_mllm_spec(mllm)
    wrong = MLLMSpec(family=spec.family, num_layers=spec.num_layers, width=spec.width * 2, name="wider-internvl")
    save_dla(init_dla(wrong, target="flux"), models / "dla" / TINY_DLA_OTHER_WIDTH)
    for sub in ("checkpoints", "text_encoders", "clip_vision"):
        (models / sub).mkdir(exist_ok=True)
    return models


def give_dla_a_learned_null(path: Path, seed: int) -> None:
    """Overwrite the (zero-initialised) null tokens / null pooled vector of the DLA at ``path`` with random values.

    A trained DLA's null is not zero; a zero null would let "stage 3 carries the learned null" pass on code that
    zeroes the text instead (what ConditioningZeroOut does).
    """
    import torch

    from dla_core.checkpoint import load_dla, save_dla

    dla = load_dla(path)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dla.null_tokens.copy_(torch.randn(dla.null_tokens.shape, generator=generator))
        if dla.null_pooled is not None:
            dla.null_pooled.copy_(torch.randn(dla.null_pooled.shape, generator=generator))
    save_dla(dla, path)


def cached_tiny_models_tree(root: str | Path, flux_hidden: int) -> Path:
    """The tiny tree for ``flux_hidden``, built once under ``root`` (``dla_tiny.cache``: rebuilt when a builder's
    source changes, a half-built tree from a killed run never used, old trees pruned)."""
    from dla_tiny.cache import cached_path

    return cached_path(
        f"tiny-models-flux{flux_hidden}", lambda path: build_tiny_models_tree(path, flux_hidden), root, root=root
    )


def write_reference_image(path: Path, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """A smooth random RGB reference image (PNG) so VAE/MLLM inputs are non-trivial."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * x + 4 * y + p) for p in phases], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rgb * 255).astype("uint8"), "RGB").save(path)
    return path


def make_comfy_base_directory(base: str | Path, models_dir: str | Path, repo_root: str | Path = REPO_ROOT) -> Path:
    """A ComfyUI ``--base-directory``: the pack symlinked into ``custom_nodes/``, ``models`` -> ``models_dir``.

    Also writes ``input/reference.png`` and ``extra_model_paths.yaml`` registering
    ``<base>/extra_dla`` for ``dla`` (as a user's extra paths would).
    """
    base = Path(base)
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        link.symlink_to(Path(repo_root).resolve(), target_is_directory=True)
    models_link = base / "models"
    if not models_link.exists():
        models_link.symlink_to(Path(models_dir).resolve(), target_is_directory=True)
    for sub in ("input", "output", "temp", "user", EXTRA_DLA_DIR):
        (base / sub).mkdir(exist_ok=True)
    write_reference_image(base / "input" / REFERENCE_IMAGE)
    (base / "extra_model_paths.yaml").write_text(f"dla_test_extra:\n    base_path: {base}\n    dla: {EXTRA_DLA_DIR}/\n")
    return base
