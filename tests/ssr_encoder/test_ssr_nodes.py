"""SSR-Encoder through the pack's five nodes: loading from models/ssr_encoder and models/ssr, Encode Reference, Apply."""

import pytest
import torch

import folder_paths

from devkit.helpers import layout, reference_image
from devkit.pack import pack
from devkit.tiny_sd15 import save_ssr_files, ssr_manifest, tiny_sd15_clip, tiny_sd15_unet, tiny_vit_l

nodes = pack("nodes")
registry = pack("attention_patches.kinds.registry")
SSREncoder = pack("attention_patches.kinds.ssr_encoder").SSREncoder
base = pack("attention_patches.kinds.base")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    official = save_ssr_files(root / "ssr_encoder", ssr_manifest(), "official")
    community = save_ssr_files(root / "ssr", ssr_manifest(), "community", seed=40)
    folder_paths.add_model_folder_path("ssr_encoder", str(root / "ssr_encoder"))
    folder_paths.add_model_folder_path("ssr", str(root / "ssr"))
    return official, community


@pytest.fixture(scope="module")
def sd15():
    return tiny_sd15_unet(), tiny_sd15_clip(), tiny_vit_l()


def test_ssr_is_a_registered_kind_with_its_folders():
    assert SSREncoder in registry.KINDS
    assert {"ssr_encoder", "ssr"} <= set(registry.model_folders())


def test_load_subject_encoder_lists_and_loads_every_ssr_file(folders):
    options = nodes.LoadSubjectEncoder.define_schema().inputs[0].options
    listed = {entry: choice for choice, entry in nodes.paths.encoder_files().items()}
    for folder, name in (("ssr_encoder", "pytorch_model.bin"), ("ssr_encoder", "pytorch_model_1.bin"),
                         ("ssr", "ssr_aligner.safetensors"), ("ssr", "ssr_attentions.safetensors")):
        choice = listed[(folder, name)]  # the bare name, or folder/name when another kind's folder has the same name
        assert choice in options and choice in (name, f"{folder}/{name}")
        assert registry.kind_of(nodes.paths.encoder_path(choice)) is SSREncoder
        encoder = nodes.LoadSubjectEncoder.execute(encoder_name=choice).args[0]
        assert isinstance(encoder, SSREncoder) and len(encoder.checkpoint.layers) == 16
    official = nodes.LoadSubjectEncoder.execute(encoder_name=listed[("ssr_encoder", "pytorch_model_1.bin")]).args[0]
    community = nodes.LoadSubjectEncoder.execute(encoder_name="ssr_aligner.safetensors").args[0]
    assert not torch.equal(official.checkpoint.aligner.to_q.weight, community.checkpoint.aligner.to_q.weight)


def test_encode_reference_and_apply_nodes(folders, sd15):
    unet, clip, vision = sd15
    encoder = nodes.LoadSubjectEncoder.execute(encoder_name="ssr_aligner.safetensors").args[0]
    photo = reference_image(3, size=(80, 64))
    subjects = None
    for phrase, query in (("man", "a man"), ("dog", "a dog")):
        out = nodes.EncodeReference.execute(clip_vision=vision, clip=clip, image=photo, phrase=phrase, subjects=subjects,
                                            subject_encoder=encoder, query=query, mask_weight=1.0)
        subjects = out.args[0]
    assert [s.reference.query_text for s in subjects] == ["a man", "a dog"]
    tokens = [encoder.encodings[s.reference].tokens for s in subjects]  # encoded eagerly on Encode Reference
    assert not torch.allclose(tokens[0], tokens[1], atol=1e-4)  # one photo, two queries, two subjects
    apply = dict(model=unet, subject_encoder=encoder, subjects=subjects, scale=0.65, start_percent=0.0, end_percent=1.0,
                 drop_grounding=False)
    model, plan = nodes.ApplyMultiSubjectAttention.execute(**apply).args
    assert len(model.model_options["transformer_options"]["patches_replace"]["attn2"]) == 16
    boxed, _ = nodes.ApplyMultiSubjectAttention.execute(**apply, layout=layout([(0, 0, 0.5, 1), (0.5, 0, 1, 1)],
                                                                                width=192, height=128)).args
    assert len(boxed.model_options["transformer_options"]["patches_replace"]["attn2"]) == 16


def test_encode_reference_names_a_wrong_clip_vision_on_its_node(folders, sd15, tiny):
    _, clip, _ = sd15
    encoder = nodes.LoadSubjectEncoder.execute(encoder_name="ssr_aligner.safetensors").args[0]
    with pytest.raises(base.SubjectSetupError, match="Encode Reference: .*ViT-L/14"):
        nodes.EncodeReference.execute(clip_vision=tiny.tiny_clip_vision(), clip=clip, image=reference_image(0), phrase="dog",
                                      subject_encoder=encoder)


def test_without_clip_the_query_cannot_be_encoded_and_the_error_says_where_to_connect_it(folders, sd15):
    unet, _, vision = sd15
    encoder = nodes.LoadSubjectEncoder.execute(encoder_name="ssr_aligner.safetensors").args[0]
    fix = r"SSR-Encoder encodes the query .* SD1.5 checkpoint's CLIP, and Encode Reference's 'clip' input is not connected: connect the SD1.5 checkpoint's CLIP"
    with pytest.raises(base.SubjectSetupError, match="^Encode Reference: " + fix):
        nodes.EncodeReference.execute(clip_vision=vision, image=reference_image(0), phrase="dog", subject_encoder=encoder)
    subjects = nodes.EncodeReference.execute(clip_vision=vision, image=reference_image(0), phrase="dog").args[0]
    with pytest.raises(base.SubjectSetupError, match=r"^Apply Multi-Subject Attention: subject 1 \('dog'\): " + fix):
        nodes.ApplyMultiSubjectAttention.execute(model=unet, subject_encoder=encoder, subjects=subjects, scale=0.65,
                                                 start_percent=0.0, end_percent=1.0, drop_grounding=False)


def test_mask_weight_and_query_reach_the_reference(sd15):
    _, clip, vision = sd15
    mask = torch.zeros(1, 64, 48)
    mask[:, 10:40, 5:30] = 1
    subjects, used = nodes.EncodeReference.execute(clip_vision=vision, clip=clip, image=reference_image(1), phrase="dog",
                                                   mask=mask, query="  the dog  ", mask_weight=2.5).args
    reference = subjects[0].reference
    assert (reference.query, reference.mask_weight) == ("the dog", 2.5)
    assert torch.equal(reference.mask, mask) and torch.equal(used, mask)
