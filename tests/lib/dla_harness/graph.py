"""API-format prompts for the in-process ComfyUI: :class:`Graph` and the DLA graph pieces the tests share."""

from __future__ import annotations

from dataclasses import dataclass

from dla_harness.tree import REFERENCE_IMAGE, TINY_DLA, TINY_FLUX, TINY_LORA, TINY_MLLM, TINY_VAE


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


def add_staged_sampler(graph: Graph, nodes: PipelineNodes, **overrides) -> str:
    """A DLAStagedKSampler wired to ``nodes`` (2 euler steps, tau 0.95/0.85, identity on).

    ``overrides`` replace inputs (``None`` drops one).
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
