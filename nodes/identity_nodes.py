"""VAE Identity Encode: reference image(s) -> FLUX reference latents (the paper's VAE identity)."""

from __future__ import annotations

import comfy.utils
import torch
from comfy_api.latest import io

from ..dla_core.images import identity_resolution, to_pil_list
from .input_checks import checked_inputs
from .types import CATEGORY, IDENTITY, REFERENCE_METHODS, ReferenceIdentity

DEFAULT_MEGAPIXELS = 1.0  # FLUX Kontext-style references are about 1 MP
RESAMPLING = "lanczos"


def _resize(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[1, H, W, 3] -> [1, height, width, 3]; center-crops the sub-16 px aspect remainder instead of stretching."""
    if image.shape[1] == height and image.shape[2] == width:
        return image
    return comfy.utils.common_upscale(image.movedim(-1, 1), width, height, RESAMPLING, "center").movedim(1, -1)


def encode_identity(
    vae, images: list[torch.Tensor], megapixels: float, upscale: bool, method: str
) -> ReferenceIdentity:
    """VAE-encode every reference (each IMAGE batch item is one) at its own resolution; see ``identity_resolution``."""
    singles = []
    for index, batch in enumerate(images):
        to_pil_list(batch, name="reference image" if index == 0 else f"reference image input {index + 1}")  # RGB, size
        singles.extend(batch[i : i + 1] for i in range(batch.shape[0]))
    progress = comfy.utils.ProgressBar(len(singles))
    latents, sizes = [], []
    for image in singles:
        width, height = identity_resolution(int(image.shape[2]), int(image.shape[1]), megapixels, upscale)
        pixels = _resize(image[..., :3], width, height)
        latents.append(vae.encode(pixels))  # [1, 16, height / 8, width / 8]
        sizes.append((width, height))
        progress.update(1)
    return ReferenceIdentity(latents=tuple(latents), method=method, pixel_sizes=tuple(sizes))


class DLAVAEIdentityEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAVAEIdentityEncode",
            display_name="VAE Identity Encode",
            category=CATEGORY,
            description=(
                "VAE-encodes the reference image(s) of the subject as FLUX reference latents (in-context identity, "
                "as in FLUX Kontext). The Staged KSampler adds them in stages 2 and 3 only."
            ),
            inputs=[
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors)."),
                io.Image.Input(
                    "image", tooltip="Reference image(s); every image of a batch is one more reference. RGB only."
                ),
                io.Float.Input(
                    "megapixels",
                    default=DEFAULT_MEGAPIXELS,
                    min=0.0,
                    max=16.0,
                    step=0.05,
                    tooltip="Largest reference area in megapixels (aspect kept, sides rounded to multiples of 16). 0 = "
                    "keep the size, only round.",
                ),
                io.Boolean.Input(
                    "upscale_small",
                    default=False,
                    tooltip="Also enlarge references smaller than 'megapixels' (off: small references keep their "
                    "size).",
                ),
                io.Combo.Input(
                    "placement",
                    options=list(REFERENCE_METHODS),
                    default="offset",
                    tooltip="How FLUX positions the reference tokens: offset = beside the image (Kontext), index = own "
                    "position index per reference, uxo = UNO/USO-style diagonal offsets.",
                ),
                io.Image.Input(
                    "image_2", optional=True, tooltip="Optional extra reference image(s), e.g. of another size."
                ),
                io.Image.Input("image_3", optional=True, tooltip="Optional extra reference image(s)."),
            ],
            outputs=[
                IDENTITY.Output(
                    display_name="IDENTITY",
                    tooltip="Reference latents + placement, for the Staged KSampler / Staged Guider.",
                )
            ],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(
        cls, vae, image, megapixels: float, upscale_small: bool, placement: str, image_2=None, image_3=None
    ) -> io.NodeOutput:
        images = [item for item in (image, image_2, image_3) if item is not None]
        return io.NodeOutput(encode_identity(vae, images, megapixels, upscale_small, placement))
