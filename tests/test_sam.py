"""Background removal with segment-anything (a random vit_b with the real architecture) in Encode Reference."""

import sys

import pytest
import torch

import folder_paths

from devkit.helpers import reference_image
from devkit.pack import pack

nodes = pack("nodes")
sam = pack("models.sam")
references = pack("attention_patches.references")


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    segment_anything = pytest.importorskip("segment_anything")
    torch.manual_seed(0)
    model = segment_anything.sam_model_registry["vit_b"](checkpoint=None)
    folder = tmp_path_factory.mktemp("sams")
    torch.save(model.state_dict(), folder / "sam_vit_b_random.pth")
    folder_paths.add_model_folder_path("sams", str(folder))
    return folder / "sam_vit_b_random.pth"


def test_variants_are_detected_from_the_keys():
    for width, name in ((768, "vit_b"), (1024, "vit_l"), (1280, "vit_h")):
        assert sam.sam_variant({sam.PATCH_EMBED_KEY: torch.zeros(width, 3, 16, 16)}) == name
    with pytest.raises(sam.SamFormatError, match="not a segment-anything checkpoint"):
        sam.sam_variant({"model.diffusion_model.x": torch.zeros(1)})


def test_sam_cuts_out_the_subject_and_that_mask_is_what_gets_encoded(sam_file, tiny_vision, tiny_clip, tiny_encoder, monkeypatch):
    torch.set_num_threads(2)  # the real-size ViT-B gains from both cores (conftest gives the thread back)
    assert sam_file.name in nodes.EncodeReference.define_schema().inputs[6].options
    seen = []
    encode = tiny_vision.encode_image

    def spy(pixels, crop=True):
        seen.append(pixels.clone())
        return encode(pixels, crop=crop)

    monkeypatch.setattr(tiny_vision, "encode_image", spy)
    image = reference_image(4, size=(48, 64))
    subjects, mask = nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=image, phrase="dog",
                                                   subject_encoder=tiny_encoder,
                                                   background_removal=sam_file.name, sam_box="0.1, 0.1, 0.9, 0.9").args
    assert mask.shape == (1, 48, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(seen[-1], references.blank_background(image, mask))
    rough = torch.zeros(1, 48, 64)
    rough[:, 10:30, 20:50] = 1
    _, prompted = nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=image, phrase="dog", mask=rough,
                                                subject_encoder=tiny_encoder,
                                                background_removal=sam_file.name).args
    assert prompted.shape == (1, 48, 64)
    assert torch.equal(seen[-1], references.blank_background(image, prompted))


def test_bad_sam_box_and_missing_package_are_named(sam_file, tiny_vision, tiny_clip, monkeypatch):
    with pytest.raises(ValueError, match="sam_box"):
        nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=reference_image(0), phrase="dog",
                                      background_removal=sam_file.name, sam_box="left half")
    references._sam_cache.clear()
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ImportError, match="pip install segment-anything"):
        nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=reference_image(0), phrase="dog",
                                      background_removal=sam_file.name)
