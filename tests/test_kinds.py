"""The encoder-kind seam: recognition by keys, dispatch from the nodes, per-run caches, optional layout."""

import pytest
import torch
from safetensors.torch import save_file

import folder_paths

from helpers import apply, encode_subjects, layout, reference_image, sample
from msp_package import pack

registry = pack("attention_patches.kinds.registry")
base = pack("attention_patches.kinds.base")
ms_diffusion = pack("attention_patches.kinds.ms_diffusion")
nodes = pack("nodes")
paths = pack("nodes.paths")

BOXES = [(0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75)]
LATENT = (16, 24)


def test_every_kind_implements_the_interface():
    assert registry.KINDS, "no kind registered"
    for kind in registry.KINDS:
        assert issubclass(kind, base.SubjectEncoder)
        assert not getattr(kind, "__abstractmethods__", None), kind
        assert kind.kind and kind.title and kind.base_model and (kind.model_folders or not kind.capabilities.needs_file), kind
    assert len({kind.kind for kind in registry.KINDS}) == len(registry.KINDS)
    assert set(registry.model_folders()) == {folder for kind in registry.KINDS for folder in kind.model_folders}


def test_a_checkpoint_is_recognised_by_its_keys_not_its_name(tiny, tmp_path):
    path = tiny.save_subject_encoder(tmp_path / "renamed_anything.safetensors")
    assert registry.kind_of(path) is ms_diffusion.MSDiffusionSDXL
    encoder = registry.load_subject_encoder(path)
    assert isinstance(encoder, ms_diffusion.MSDiffusionSDXL) and encoder.name == path.name


@pytest.mark.parametrize("prefix, named", [("ip_adapter.", "IP-Adapter"), ("something.else.", "not a subject encoder")])
def test_unknown_files_name_what_they_are_and_what_the_pack_loads(tmp_path, prefix, named):
    path = tmp_path / "foreign.safetensors"
    save_file({f"{prefix}weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(registry.UnknownEncoderError, match=named) as error:
        registry.load_subject_encoder(path)
    for kind in registry.file_kinds():
        assert f"models/{kind.model_folders[0]}" in str(error.value)


def test_the_same_file_name_in_two_folders_is_listed_unambiguously(tiny, tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    tiny.save_subject_encoder(first / "shared.safetensors")
    tiny.save_subject_encoder(second / "shared.safetensors")
    tiny.save_subject_encoder(second / "only_here.safetensors")
    for folder, where in (("msp_test_kind_a", first), ("msp_test_kind_b", second)):
        folder_paths.add_model_folder_path(folder, str(where))
    monkeypatch.setattr(paths, "model_folders", lambda: ("msp_test_kind_a", "msp_test_kind_b"))
    listed = paths.encoder_files()
    assert listed == {"msp_test_kind_a/shared.safetensors": ("msp_test_kind_a", "shared.safetensors"),
                      "msp_test_kind_b/shared.safetensors": ("msp_test_kind_b", "shared.safetensors"),
                      "only_here.safetensors": ("msp_test_kind_b", "only_here.safetensors")}
    assert paths.encoder_path("msp_test_kind_b/shared.safetensors") == str(second / "shared.safetensors")
    assert paths.encoder_path("only_here.safetensors") == str(second / "only_here.safetensors")
    assert paths.encoder_path("shared.safetensors") is None  # ambiguous: the node says it is not found
    assert paths.encoder_path("../../etc/passwd") is None


def test_encode_reference_without_an_encoder_defers_encoding_to_apply(tiny_vision, tiny_clip, tiny_encoder, tiny_unet, monkeypatch):
    calls = []
    encode = tiny_vision.encode_image
    monkeypatch.setattr(tiny_vision, "encode_image", lambda pixels, crop=True: calls.append(pixels) or encode(pixels, crop=crop))
    subjects = encode_subjects(tiny_vision, tiny_clip, ["dog", "cat"])
    assert calls == [] and not any(s.reference in tiny_encoder.encodings for s in subjects)
    apply(tiny_unet, tiny_encoder, subjects, layout(BOXES))
    assert len(calls) == 2
    apply(tiny_unet, tiny_encoder, subjects, layout(BOXES), scale=0.9)  # a re-run Apply reuses the encodings
    assert len(calls) == 2


def test_a_connected_encoder_reports_a_wrong_clip_vision_on_encode_reference(tiny, tiny_clip, tiny_encoder):
    wrong = tiny.tiny_clip_vision(width=tiny.VIT_H_STANDIN_WIDTH)
    with pytest.raises(base.SubjectSetupError, match="^Encode Reference: the reference was encoded with .*clip_vision_g"):
        nodes.EncodeReference.execute(clip_vision=wrong, clip=tiny_clip, image=reference_image(0), phrase="dog",
                                      subject_encoder=tiny_encoder)
    subjects = nodes.EncodeReference.execute(clip_vision=wrong, clip=tiny_clip, image=reference_image(0), phrase="dog").args[0]
    with pytest.raises(base.SubjectSetupError, match=r"^Apply Multi-Subject Attention: subject 1 \('dog'\): .*clip_vision_g"):
        apply(tiny.tiny_sdxl_model(), tiny_encoder, subjects, layout(BOXES[:1]))


def test_ms_diffusion_without_clip_names_the_input_and_the_fix_on_the_encoding_node(tiny_vision, tiny_encoder, tiny_unet):
    """clip is optional on Encode Reference (AnyStory has none); MS-Diffusion encodes the phrase with it."""
    schema = nodes.EncodeReference.define_schema()
    assert [i.id for i in schema.inputs][:2] == ["clip_vision", "clip"] and schema.inputs[1].optional  # same name, same place
    fix = r"MS-Diffusion encodes each phrase with SDXL's CLIP-L, and Encode Reference's 'clip' input is not connected: connect the SDXL checkpoint's CLIP"
    with pytest.raises(base.SubjectSetupError, match="^Encode Reference: " + fix):
        nodes.EncodeReference.execute(clip_vision=tiny_vision, image=reference_image(0), phrase="dog", subject_encoder=tiny_encoder)
    subjects = nodes.EncodeReference.execute(clip_vision=tiny_vision, image=reference_image(0), phrase="dog").args[0]
    with pytest.raises(base.SubjectSetupError, match=r"^Apply Multi-Subject Attention: subject 1 \('dog'\): " + fix):
        apply(tiny_unet, tiny_encoder, subjects, layout(BOXES[:1]))


def test_ms_diffusion_without_a_layout_names_the_missing_box_node(tiny_unet, tiny_encoder, tiny_vision, tiny_clip):
    subjects = encode_subjects(tiny_vision, tiny_clip, ["dog"])
    with pytest.raises(base.SubjectSetupError, match="connect a Draw Layout Box"):
        apply(tiny_unet, tiny_encoder, subjects, None)


def test_run_caches_are_dropped_when_sampling_ends(tiny_unet, tiny_encoder, tiny_vision, tiny_clip):
    subjects = encode_subjects(tiny_vision, tiny_clip, ["dog", "cat"])
    model, _ = apply(tiny_unet, tiny_encoder, subjects, layout(BOXES), feather=2.0)
    routing = model.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)].routings[0]
    seen = []
    original = routing.box_routes

    def spy(*args, **kwargs):
        seen.append(len(routing._routes))
        return original(*args, **kwargs)

    routing.box_routes = spy
    try:
        sample(model, tiny_clip, LATENT, steps=2)
    finally:
        del routing.box_routes
    assert max(seen) > 0, "the routes were cached during the run"
    assert not routing._routes and not routing._tokens and not routing._selectors
    assert "multisubject_run_state" not in model.model_options["transformer_options"]


def test_encodings_are_memoised_by_the_encoder_and_dropped_with_their_reference(tiny, tmp_path, tiny_vision, tiny_clip):
    """Nothing is written into Encode Reference's (cached) output; a reloaded encoder encodes afresh."""
    import gc

    path = tiny.save_subject_encoder(tmp_path / "tiny.safetensors")
    first, second = registry.load_subject_encoder(path), registry.load_subject_encoder(path)
    subject = encode_subjects(tiny_vision, tiny_clip, ["dog"])[0]
    assert vars(subject) == {"reference": subject.reference}  # the subject holds its reference only
    encoding = subject.encoded(first)
    assert subject.encoded(first) is encoding and first.encodings[subject.reference] is encoding
    assert subject.reference not in second.encodings  # each encoder its own memo: no key to collide
    del subject, encoding
    gc.collect()
    assert len(first.encodings) == 0  # the reference is gone (Encode Reference's output dropped): so is its encoding
