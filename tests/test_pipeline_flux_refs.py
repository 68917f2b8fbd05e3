"""Token layout of dla_core.flux.references: packing and reference placement as ComfyUI's FLUX does it.

Expected position ids are written out by hand from the rule in ComfyUI's
``comfy/ldm/flux/model.py`` (documented in ``dla_core/flux/references.py``); ComfyUI itself is
exercised by tests/integration/test_pipeline_parity.py.
"""

import pytest
import torch

from dla_core.errors import DLAInputError
from dla_core.flux.references import (
    ReferencePlacement,
    image_position_ids,
    normalize_reference_method,
    pack_latents,
    reference_placements,
    reference_tokens,
    unpack_latents,
)


def grid_ids(index, row0, col0, rows, cols):
    """Hand-written ids: (index, row, col) for every patch, row-major."""
    return torch.tensor([[index, row0 + r, col0 + c] for r in range(rows) for c in range(cols)], dtype=torch.float32)


# Target latent 8x12 (4x6 patches); references A 6x4 (3x2 patches) and B 4x8 (2x4 patches).
TARGET = (8, 12)
REFS = [(6, 4), (4, 8)]


def test_offset_method_places_second_reference_below_first_when_box_is_tall():
    # A: 6+0 > 4+0 -> right of nothing: (0, 0); box becomes 6x4.
    # B: 4+6=10 <= 8+4=12 -> below: h_offset=6 latent pixels = 3 patches.
    assert reference_placements(TARGET, REFS, "offset") == [ReferencePlacement(1, 0, 0), ReferencePlacement(1, 6, 0)]


def test_offset_method_places_reference_right_when_that_keeps_box_square():
    # A 4x8 first: 4 <= 8 -> below (h_offset 0); box 4x8. B 6x4: 6+4=10 > 4+8=12? no -> below at 4.
    # C 8x2: 8+10=18 > 2+8=10 -> right at w=8.
    placements = reference_placements(TARGET, [(4, 8), (6, 4), (8, 2)], "offset")
    assert placements == [ReferencePlacement(1, 0, 0), ReferencePlacement(1, 4, 0), ReferencePlacement(1, 0, 8)]


def test_index_method_numbers_references_from_one_at_origin():
    assert reference_placements(TARGET, REFS, "index") == [ReferencePlacement(1, 0, 0), ReferencePlacement(2, 0, 0)]


def test_uxo_method_continues_diagonally_after_target():
    # A starts at (H, W) = (8, 12); B at (8 + 6, 12 + 4).
    assert reference_placements(TARGET, REFS, "uxo") == [ReferencePlacement(0, 8, 12), ReferencePlacement(0, 14, 16)]


@pytest.mark.parametrize(
    "method, expected",
    [
        ("offset", [grid_ids(1, 0, 0, 3, 2), grid_ids(1, 3, 0, 2, 4)]),
        ("index", [grid_ids(1, 0, 0, 3, 2), grid_ids(2, 0, 0, 2, 4)]),
        ("uxo", [grid_ids(0, 4, 6, 3, 2), grid_ids(0, 7, 8, 2, 4)]),
    ],
)
def test_reference_token_ids_match_hand_computed_grid(method, expected):
    refs = [torch.randn(1, 16, h, w) for h, w in REFS]
    tokens, ids = reference_tokens(refs, TARGET, batch_size=1, method=method)
    assert torch.equal(ids, torch.cat(expected))
    assert tokens.shape == (1, 6 + 8, 64)


def test_odd_reference_sizes_round_offsets_like_comfyui():
    # A 5x3 -> padded to 6x4 (3x2 patches), box 5x3. B 4x4: 4+5=9 > 4+3=7 -> right at w=3
    # latent pixels, which rounds to (3 + 1) // 2 = 2 patches.
    refs = [torch.randn(1, 16, 5, 3), torch.randn(1, 16, 4, 4)]
    tokens, ids = reference_tokens(refs, TARGET, batch_size=1, method="offset")
    assert torch.equal(ids, torch.cat([grid_ids(1, 0, 0, 3, 2), grid_ids(1, 0, 2, 2, 2)]))
    assert tokens.shape == (1, 6 + 4, 64)


def test_odd_latent_is_padded_circularly_before_packing():
    latent = torch.arange(16 * 3 * 3, dtype=torch.float32).view(1, 16, 3, 3)
    padded = torch.nn.functional.pad(latent, (0, 1, 0, 1), mode="circular")
    assert torch.equal(pack_latents(latent), pack_latents(padded))
    assert torch.equal(unpack_latents(pack_latents(latent), 3, 3), latent)


def test_reference_with_batch_one_is_shared_by_whole_batch():
    ref = torch.randn(1, 16, 4, 4)
    tokens, _ = reference_tokens([ref], TARGET, batch_size=3)
    assert torch.equal(tokens[0], tokens[2])
    assert torch.equal(tokens[1], pack_latents(ref)[0])


def test_packing_and_target_ids_match_diffusers_flux_pipeline():
    from diffusers import FluxPipeline

    latent = torch.randn(2, 16, 8, 12)
    assert torch.equal(pack_latents(latent), FluxPipeline._pack_latents(latent, 2, 16, 8, 12))
    expected_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32)
    assert torch.equal(image_position_ids(8, 12), expected_ids)


def test_method_spellings_from_comfyui_node_are_accepted():
    assert normalize_reference_method("uxo/uno") == "uxo"
    assert normalize_reference_method(None) == "offset"
    with pytest.raises(DLAInputError, match="offset, index, uxo"):
        normalize_reference_method("diagonal")
