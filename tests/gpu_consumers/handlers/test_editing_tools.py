"""EDITING's tool rules without models: entries, LoRAs per tool, reference choice, regions and
the EDIT composite (gpu_consumers/handlers/editing_tools.py)."""

from __future__ import annotations

import numpy as np
import pytest

from generations.requests import EditingTool
from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.editing_tools import (
    TOOLS,
    EntryRef,
    choose_reference,
    entry_option,
    keep_outside,
    place_reference,
    region_from_alpha,
    tool_loras,
)
from schemas.task_params import ReferenceImage


def test_entries_and_the_loras_each_tool_applies():
    anna = entry_option("subject", {"id": "x", "name": " Anna ", "lora_ref": "demo/anna", "lora_weight": 0.7})
    dress = entry_option("product", {"name": "Dress", "lora_ref": "demo/summer-dress"})
    plain = entry_option("product", {"name": "Scarf"})
    assert anna == EntryRef("subject", "Anna", "x", "demo/anna", 0.7) and dress.weight == 1.0
    entries = {"subject": anna, "product": dress}
    assert tool_loras(TOOLS[EditingTool.SUBJECT_SWAP], entries) == ({"subject": 0.7}, {"subject": "demo/anna"})
    assert tool_loras(TOOLS[EditingTool.PRODUCT_ENHANCEMENT], entries) == ({"product": 1.0},
                                                                           {"product": "demo/summer-dress"})
    assert tool_loras(TOOLS[EditingTool.EDIT], entries)[1] == {"subject": "demo/anna", "product": "demo/summer-dress"}
    assert tool_loras(TOOLS[EditingTool.PRODUCT_ENHANCEMENT], {"product": plain}) == ({}, {})  # no LoRA: none
    with pytest.raises(InvalidInput, match="must be a catalog entry"):  # an unknown field
        entry_option("subject", {"name": "Anna", "lora": "demo/anna"})


def test_the_reference_of_the_tools_type_is_chosen():
    refs = [ReferenceImage(url="file:///a.png", type="garment"), ReferenceImage(url="file:///b.png", type="Subject")]
    assert choose_reference(refs, TOOLS[EditingTool.SUBJECT_SWAP].reference_types) is refs[1]
    assert choose_reference(refs, TOOLS[EditingTool.PRODUCT_ENHANCEMENT].reference_types) is refs[0]
    assert choose_reference(refs[1:], ("product",)) is refs[1]  # none of the type: the first
    assert choose_reference([], ("product",)) is None
    # The catalog entry's own references come after the request's of the tool's types, before the rest.
    anna = entry_option("subject", {"name": "Anna", "reference_urls": ["s3://catalog/anna.png"]})
    assert anna.references == (ReferenceImage(url="s3://catalog/anna.png", type="subject"),)
    assert choose_reference(refs[:1], ("subject",), anna.references) is anna.references[0]
    assert choose_reference(refs, ("subject",), anna.references) is refs[1]
    with pytest.raises(InvalidInput, match="subject.reference_urls"):
        entry_option("subject", {"name": "Anna", "reference_urls": ["ftp://x/anna.png"]})


def test_a_region_is_the_foreground_grown_and_none_without_a_boundary():
    alpha = np.zeros((100, 100), np.float32)
    alpha[40:60, 30:50] = 1.0
    region = region_from_alpha(alpha)
    assert region is not None and set(np.unique(region)) == {0, 255}
    ys, xs = np.nonzero(region)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (38, 61, 28, 51)  # grown by 2 px
    assert region_from_alpha(np.full((100, 100), 0.5, np.float32)) is None  # all foreground
    assert region_from_alpha(np.zeros((100, 100), np.float32)) is None  # nothing found


def test_the_reference_covers_the_mask_box_and_lands_only_in_the_mask():
    base = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:30] = 255  # a 10 x 20 box
    mask[10, 20] = 0  # a notch: the base shows through it
    reference = np.zeros((10, 20, 3), np.uint8)  # wide: covering a tall box crops its sides
    reference[:, :10] = (255, 0, 0)
    reference[:, 10:] = (0, 0, 255)
    out = place_reference(base, reference, mask)
    assert (out[mask == 0] == 0).all()
    # Scaled by 2 (to 20 x 40), centre-cropped to 10 px wide: the red/blue border is in the middle
    # of the box (columns 24 | 25); Lanczos rings a little next to it, so check the flat parts.
    assert (out[20, 22:24] == (255, 0, 0)).all() and (out[20, 26:28] == (0, 0, 255)).all()
    assert out[20, 24, 0] > out[20, 24, 2] and out[20, 25, 2] > out[20, 25, 0]
    assert np.array_equal(keep_outside(np.full_like(base, 9), base, mask)[mask == 0], base[mask == 0])
    assert (keep_outside(np.full_like(base, 9), base, mask)[mask == 255] == 9).all()
