"""AnyStory checkpoint loader: every key of the real file's manifest lands on its ComfyUI module and rows."""

import pytest
import torch

from devkit.pack import pack

checkpoint = pack("models.anystory.checkpoint")
embedder = pack("models.anystory.embedder")
RANKS = {"r_ref": 4, "r_router": 6}


def manifest_file(manifest: dict, with_base_redux: bool = False) -> dict:
    """A flat checkpoint with every manifest key, as shape-only (meta) tensors: no memory at FLUX size."""
    flat = {}
    for part in ("ref", "redux", "router"):
        for key, entry in manifest[part].items():
            if entry["status"] == "maybe" and not with_base_redux:
                continue
            shape = [RANKS.get(d, d) for d in entry["shape"]]
            flat[f"{part}.{key}"] = torch.empty(shape, device="meta")
    return flat


@pytest.fixture(scope="module")
def manifest(golden_set):
    import json

    return json.loads((golden_set("anystory").path / "anystory_flux_manifest.json").read_text())


def test_every_manifest_lora_maps_to_its_fused_rows(manifest):
    flat = manifest_file(manifest)
    weights = checkpoint.build_weights(flat, "anystory_flux.bin")
    assert weights.hidden_size == 3072 and weights.blocks() == (19, 38)
    checked = 0
    for part, loras in (("ref", weights.ref), ("router", weights.router)):
        for key, entry in manifest[part].items():
            if entry.get("comfy") is None or not key.endswith("lora_B.weight"):
                continue
            target = entry["comfy"].removesuffix(".weight")
            rows = tuple(entry["comfy_rows"]) if entry["comfy_rows"] is not None else None
            matches = [d for d in loras.deltas[target] if d.up is flat[f"{part}.{key}"]]
            assert len(matches) == 1, key
            assert matches[0].rows == rows, key
            assert matches[0].down is flat[f"{part}.{key.replace('lora_B', 'lora_A')}"]
            checked += 1
    assert checked == sum(len(v) for v in weights.ref.deltas.values()) + sum(len(v) for v in weights.router.deltas.values())
    assert checked > 600


def test_routing_loras_land_on_their_blocks(manifest):
    weights = checkpoint.build_weights(manifest_file(manifest), "anystory_flux.bin")
    blocks = {e["comfy_block"] for k, e in manifest["router"].items() if "routing_map" in k}
    assert set(weights.routing) == blocks
    assert weights.routing["single_blocks.37"].query.bias is not None


def test_embedders_take_base_redux_from_the_file_or_the_style_model(manifest):
    without = checkpoint.build_weights(manifest_file(manifest), "x.bin")
    assert "redux_up.weight" not in without.redux_embedder
    with pytest.raises(KeyError):
        embedder.embedder_state(without.redux_embedder, None)
    base = {k: torch.empty(1) for k in ("redux_up.weight", "redux_up.bias", "redux_down.weight", "redux_down.bias")}
    assert embedder.embedder_state(without.redux_embedder, base)["redux_up.weight"] is base["redux_up.weight"]
    with_copies = checkpoint.build_weights(manifest_file(manifest, with_base_redux=True), "x.bin")
    assert with_copies.router_embedder["redux_down.weight"].shape == (4096, 12288)


def test_inert_loras_are_ignored(golden_set):
    tensors = golden_set("anystory").tensors("weights")
    flat = {k.removeprefix("anystory."): v for k, v in tensors.items() if k.startswith("anystory.")}
    weights = checkpoint.build_weights(flat, "tiny.bin")
    inert = golden_set("anystory").cases["lora_targets"]
    expected = {f"ref.{m}" for m in inert["ref_inert"]} | {f"router.{m}" for m in inert["router_inert"]}
    assert set(weights.ignored) == expected
    assert not any(".img_mlp.0" in t or ".txt_mlp.0" in t for t in weights.ref.targets() + weights.router.targets())


def official_layout(golden_set) -> dict:
    """The golden weights nested as anystory_flux.bin holds them: {"ref": ..., "redux": ..., "router": ...}."""
    nested = {"ref": {}, "redux": {}, "router": {}}
    for k, v in golden_set("anystory").tensors("weights").items():
        if k.startswith("anystory."):
            part, _, rest = k.removeprefix("anystory.").partition(".")
            nested[part][rest] = v
    return nested


def test_recognised_by_keys_and_bad_files_named(tmp_path, golden_set):
    nested = official_layout(golden_set)
    path = tmp_path / "anystory_flux.bin"
    torch.save(nested, path)
    assert checkpoint.recognises(pack("models.safe_load").read_keys(path))
    assert checkpoint.load_weights(path).hidden_size == 32
    del nested["router"]
    torch.save(nested, tmp_path / "broken.bin")
    with pytest.raises(checkpoint.AnyStoryFormatError, match="lacks the 'router'"):
        checkpoint.load_weights(tmp_path / "broken.bin")
    torch.save({"ref": {"x": torch.zeros(1)}, "redux": nested["redux"], "router": {"evil": object()}}, tmp_path / "evil.bin")
    with pytest.raises(checkpoint.AnyStoryFormatError, match="refused"):
        checkpoint.load_weights(tmp_path / "evil.bin")


def test_conversion_to_safetensors_round_trips(tmp_path, golden_set):
    convert = pack("models.anystory.convert")
    nested = official_layout(golden_set)
    torch.save(nested, tmp_path / "anystory_flux.bin")
    target = convert.convert(tmp_path / "anystory_flux.bin", tmp_path / "anystory_flux.safetensors")
    keys = pack("models.safe_load").read_keys(target)
    assert checkpoint.recognises(keys)
    original, converted = checkpoint.load_weights(tmp_path / "anystory_flux.bin"), checkpoint.load_weights(target)
    for name, deltas in original.ref.deltas.items():
        assert all(torch.equal(a.up, b.up) and a.rows == b.rows for a, b in zip(deltas, converted.ref.deltas[name]))
    torch.save({"ref": {}, "redux": {}, "router": {}}, tmp_path / "empty.bin")
    with pytest.raises(checkpoint.AnyStoryFormatError):
        convert.convert(tmp_path / "empty.bin", tmp_path / "empty.safetensors")
    assert not (tmp_path / "empty.safetensors").exists()
