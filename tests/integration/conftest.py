"""Shared harness for the integration tests: a real ComfyUI, tiny models, this pack loaded as a custom node.

Reusable pieces (also for the HTTP-server and browser tests):

* :func:`find_comfyui` -- the ComfyUI checkout to test against: ``$COMFYUI_PATH``, the
  ComfyUI whose ``custom_nodes/`` holds this repository, or ``/opt/ComfyUI``.
  The ``comfyui_path`` fixture skips (with the reason) when there is none; under ``CI=true`` it fails.
* :func:`build_tiny_models_tree` -- writes a ComfyUI ``models/`` tree with tiny random
  models: ``diffusion_models/tiny_flux.safetensors`` (FLUX, BFL layout),
  ``vae/tiny_ae.safetensors``, ``loras/tiny_flux_lora.safetensors``,
  ``mllm/tiny-internvl`` (+ ``mllm/tiny-qwen25vl``) and ``dla/tiny_dla.safetensors``
  (made with ``init-dla``; plus checkpoints for another MLLM / another width for error
  tests). Session fixture: ``tiny_models_dir``. Set ``DLA_TINY_MODELS_CACHE`` to a
  directory to reuse the tree across runs (it is rebuilt when :data:`TINY_TREE_VERSION`
  changes).
* :func:`make_comfy_base_directory` -- a ``--base-directory`` for ComfyUI: ``custom_nodes/``
  with a symlink to this repository, ``models/`` -> the tiny tree, ``input/`` with a
  reference image, and an ``extra_model_paths.yaml``.
* ``comfy`` fixture -- ComfyUI set up once per session *in this process* (``--cpu``), its
  built-in and custom nodes loaded by its own loader, and :class:`ComfyRunner` to queue
  API-format prompts through ``execution.PromptExecutor`` the way ``main.py`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # dla_core, after ComfyUI (whose top-level 'nodes' module shadows ours)
PACK_DIR_NAME = "comfyui-dla-subject"
TINY_TREE_VERSION = "4"  # bump when a tiny builder changes

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


# ----------------------------------------------------------------------------- ComfyUI location
def find_comfyui() -> tuple[Path | None, str]:
    """``(path, "")`` of the ComfyUI to test with, or ``(None, reason)`` when there is none.

    ``$COMFYUI_PATH``, else the ComfyUI whose ``custom_nodes/`` holds this repository, else
    ``/opt/ComfyUI`` (tests/ci_guard.py, shared with server.py and the session's version line).
    """
    import ci_guard

    return ci_guard.find_comfyui()


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    """The ComfyUI checkout; skips the test with the reason when there is none (fails instead under ``CI=true``)."""
    path, reason = find_comfyui()
    if path is None:
        import ci_guard

        ci_guard.skip_or_fail(reason)
    return path


# ----------------------------------------------------------------------------- tiny models
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


def _cached_tree(root: Path, flux_hidden: int) -> Path:
    models = root / f"tiny-models-v{TINY_TREE_VERSION}-flux{flux_hidden}"
    marker = models / ".complete"
    if not marker.is_file():
        if models.exists():
            shutil.rmtree(models)
        staging = root / f".tiny-models-building-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        build_tiny_models_tree(staging, flux_hidden=flux_hidden)
        (staging / ".complete").write_text(TINY_TREE_VERSION)
        staging.rename(models)
    return models


@pytest.fixture(scope="session")
def tiny_models_dir(comfyui_path, tmp_path_factory) -> Path:
    """A ComfyUI ``models/`` tree with the tiny models, built once per session (or reused from the cache).

    The tiny FLUX is as narrow as this ComfyUI allows (:func:`tiny_flux_width`).
    """
    cache = os.environ.get("DLA_TINY_MODELS_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("tiny-models")
    root.mkdir(parents=True, exist_ok=True)
    return _cached_tree(root, tiny_flux_width(comfyui_path))


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


# ----------------------------------------------------------------------------- in-process ComfyUI
class _ServerStub:
    """What ``execution.PromptExecutor`` calls on ``PromptServer`` for messaging; records the messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages: list[tuple[str, object]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


@dataclass
class PromptResult:
    """Outcome of one queued prompt."""

    prompt_id: str
    valid: bool
    success: bool
    node_errors: dict = field(default_factory=dict)
    validation_error: dict | None = None
    messages: list = field(default_factory=list)
    history: dict = field(default_factory=dict)

    @property
    def execution_error(self) -> dict | None:
        for event, data in self.messages:
            if event == "execution_error":
                return data
        return None

    @property
    def error_text(self) -> str:
        """Every error message of the prompt, for assertions on wording."""
        parts = [json.dumps(self.node_errors), json.dumps(self.validation_error or {})]
        if self.execution_error:
            parts.append(self.execution_error.get("exception_message", ""))
        return "\n".join(parts)


def make_executor(execution, server, cache: str = "CLASSIC", cache_args: dict | None = None):
    """``execution.PromptExecutor`` with cache type ``cache`` (a ``CacheType`` name), as ``main.py`` builds it.

    Newer ComfyUI reads ``cache_args`` (``lru``, ``ram``, ``ram_inactive`` in GB) on every prompt;
    0.3.64 takes ``lru`` only.
    """
    import inspect

    kwargs = {"cache_type": execution.CacheType[cache]}
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        kwargs["cache_args"] = {"lru": 0, "ram": 0, "ram_inactive": 0, **(cache_args or {})}
    return execution.PromptExecutor(server, **kwargs)


class ComfyRunner:
    """Queues API-format prompts through one ``PromptExecutor`` (validation first, as the server does)."""

    def __init__(
        self, comfy_path: Path, base_dir: Path, modules: dict, cache: str = "CLASSIC", cache_args: dict | None = None
    ):
        self.comfy_path = comfy_path
        self.base_dir = base_dir
        self.execution = modules["execution"]
        self.nodes = modules["nodes"]
        self.modules = modules
        self.server = _ServerStub()
        self.executor = make_executor(self.execution, self.server, cache, cache_args)

    def run(self, prompt: dict) -> PromptResult:
        """Validate and execute ``prompt``; never raises for node errors (they are in the result)."""
        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            return PromptResult(prompt_id, False, False, node_errors=node_errors, validation_error=error)
        self.executor.execute(prompt, prompt_id, {}, outputs)
        return PromptResult(
            prompt_id,
            True,
            self.executor.success,
            node_errors=node_errors,
            messages=list(self.executor.status_messages),
            history=self.executor.history_result,
        )

    def output(self, node_id: str, index: int = 0):
        """Cached output ``index`` of node ``node_id`` from the last prompts (first list item)."""
        entry = self.executor.caches.outputs.get(str(node_id))
        if asyncio.iscoroutine(entry):  # newer ComfyUI's caches are async
            entry = asyncio.run(entry)
        if entry is None:
            raise KeyError(f"node {node_id} has no cached output")
        outputs = entry.outputs if hasattr(entry, "outputs") else entry
        return outputs[index][0]

    def reset_cache(self):
        self.executor.reset()


def _start_comfy_in_process(comfy_path: Path, base_dir: Path) -> dict:
    sys.path.insert(0, str(comfy_path))
    sys.argv = ["main.py", "--cpu", "--base-directory", str(base_dir), "--disable-api-nodes"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import folder_paths  # noqa: F401  (reads --base-directory at import)
    import utils.extra_config

    utils.extra_config.load_extra_path_config(str(base_dir / "extra_model_paths.yaml"))
    import execution

    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    return {"execution": execution, "nodes": nodes}


@pytest.fixture(scope="session")
def comfy(comfyui_path, tiny_models_dir, tmp_path_factory) -> ComfyRunner:
    """ComfyUI running in this process with the pack loaded; one executor (and cache) for the session."""
    if "comfy" in sys.modules and not str(getattr(sys.modules["comfy"], "__file__", "")).startswith(str(comfyui_path)):
        from ci_guard import skip_or_fail

        skip_or_fail("another 'comfy' package is already imported in this process")
    base = make_comfy_base_directory(tmp_path_factory.mktemp("comfy-base"), tiny_models_dir)
    modules = _start_comfy_in_process(comfyui_path, base)
    return ComfyRunner(comfyui_path, base, modules)


# ----------------------------------------------------------------------------- API-format graphs
class Graph:
    """Builds an API-format prompt: ``out = g.add("KSampler", model=g.out(m), ...)``; ids are "1", "2", ..."""

    def __init__(self):
        self.prompt: dict[str, dict] = {}

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    @staticmethod
    def out(node_id: str, index: int = 0) -> list:
        """A link to output ``index`` of ``node_id``."""
        return [node_id, index]


@dataclass
class PipelineNodes:
    """Ids of the nodes :func:`add_dla_pipeline` added."""

    model: str  # LoraLoaderModelOnly (or UNETLoader without LoRA)
    vae: str
    image: str
    mllm: str
    features: str
    dla: str
    positive: str  # DLAAggregate
    identity: str
    latent: str


def add_dla_pipeline(
    graph: Graph,
    prompt_text: str = "a dog on a beach",
    reference: str = REFERENCE_IMAGE,
    size: int = 64,
    batch_size: int = 1,
    guidance: float = 2.5,
    lora: bool = True,
    mllm_name: str = TINY_MLLM,
    dla_name: str = TINY_DLA,
    placement: str = "offset",
) -> PipelineNodes:
    """Loaders + MLLM joint encode + DLA + VAE identity + empty latent (everything up to the sampler)."""
    unet = graph.add("UNETLoader", unet_name=TINY_FLUX, weight_dtype="default")
    model = (
        graph.add("LoraLoaderModelOnly", model=graph.out(unet), lora_name=TINY_LORA, strength_model=1.0)
        if lora
        else unet
    )
    vae = graph.add("VAELoader", vae_name=TINY_VAE)
    image = graph.add("LoadImage", image=reference)
    mllm = graph.add("DLAMLLMLoader", mllm_name=mllm_name, dtype="auto", device="default")
    features = graph.add(
        "DLAMLLMJointEncode", mllm=graph.out(mllm), prompt=prompt_text, image=graph.out(image), image_size=56
    )
    dla = graph.add("DLALoader", dla_name=dla_name)
    positive = graph.add("DLAAggregate", dla=graph.out(dla), mllm_features=graph.out(features), guidance=guidance)
    identity = graph.add(
        "DLAVAEIdentityEncode",
        vae=graph.out(vae),
        image=graph.out(image),
        megapixels=0.0,
        upscale_small=False,
        placement=placement,
    )
    latent = graph.add("EmptySD3LatentImage", width=size, height=size, batch_size=batch_size)
    return PipelineNodes(model, vae, image, mllm, features, dla, positive, identity, latent)


@pytest.fixture
def graph() -> Graph:
    """An empty API-format graph."""
    return Graph()


@pytest.fixture
def dla_pipeline():
    """:func:`add_dla_pipeline`, for tests (importing conftest by name is ambiguous with tests/conftest.py)."""
    return add_dla_pipeline


@pytest.fixture
def staged_sampler():
    """Adds a DLAStagedKSampler after :func:`add_dla_pipeline` nodes: ``staged_sampler(graph, nodes, **overrides)``."""
    return add_staged_sampler


def add_staged_sampler(graph: Graph, nodes: PipelineNodes, **overrides) -> str:
    """A DLAStagedKSampler wired to ``nodes`` (2 euler steps, tau 0.95/0.85, identity on).

    ``overrides`` replace inputs.
    """
    inputs = dict(
        model=graph.out(nodes.model),
        positive=graph.out(nodes.positive),
        latent_image=graph.out(nodes.latent),
        seed=7,
        steps=2,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        denoise=1.0,
        tau1=0.95,
        tau2=0.85,
        identity=graph.out(nodes.identity),
    )
    inputs.update(overrides)
    return graph.add("DLAStagedKSampler", **{key: value for key, value in inputs.items() if value is not None})


@pytest.fixture
def new_graph():
    """The :class:`Graph` class, for tests that build more than one prompt."""
    return Graph


@pytest.fixture(scope="session")
def tiny_names():
    """File and folder names of the tiny models (as the loaders' dropdowns show them)."""
    from types import SimpleNamespace

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
