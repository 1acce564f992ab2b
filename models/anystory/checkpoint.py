"""Read ``anystory_flux.bin`` (or its ``.safetensors`` conversion) into per-stream ComfyUI deltas.

The file is a dict ``{"ref", "redux", "router"}``: PEFT LoRAs on diffusers FLUX module names
(``ref.transformer.<module>.lora_{A,B}.weight``, ``router.transformer...``), the routing-map
LoRAs of every attention processor, and two gated pooling embedders on Redux. Each PEFT LoRA
is mapped to the ComfyUI module whose fused weight holds the diffusers module and to the
output rows it owns there (the rules of ``comfy.utils.flux_to_diffusers``). Only the modules
the official forward switches on are kept; the rest (e.g. ``ff.net.0.proj``) are inert there
and listed in ``ignored``.
"""

from __future__ import annotations

import collections
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..safe_text import quoted
from ..safe_load import CheckpointError, read_tensors, require_floating
from .lora import LowRank, LowRankWeights, StreamLoRA, StreamLoRAWeights

log = logging.getLogger("comfyui_multisubject.models.anystory")

PEFT_KEY = re.compile(r"^(?:transformer\.)?(?P<module>.+?)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")
ROUTING_KEY = re.compile(
    r"^(?:transformer\.)?(?P<block>(?:single_)?transformer_blocks\.\d+)\.attn\.processor\."
    r"to_(?P<qk>[qk])_routing_map_lora_(?P<ab>[AB])\.(?P<param>weight|bias)$"
)
DOUBLE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
SINGLE = re.compile(r"^single_transformer_blocks\.(\d+)\.(.+)$")
QKV = {"to_q": 0, "to_k": 1, "to_v": 2, "add_q_proj": 0, "add_k_proj": 1, "add_v_proj": 2}

# the modules each stream's LoRA is switched on for in the official forward (enable_lora call sites)
REF_SITES = frozenset({"x_embedder", "norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.2"})
ROUTER_SITES = frozenset({"context_embedder", "norm1_context.linear", "attn.add_q_proj", "attn.add_k_proj",
                          "attn.add_v_proj", "attn.to_add_out", "ff_context.net.2"})
SINGLE_SITES = frozenset({"norm.linear", "proj_mlp", "attn.to_q", "attn.to_k", "attn.to_v", "proj_out"})
EMBEDDER_LORA_KEYS = ("redux_up_lora_A.weight", "redux_up_lora_B.weight", "redux_up_lora_B.bias",
                      "redux_down_lora_A.weight", "redux_down_lora_B.weight", "redux_down_lora_B.bias",
                      "gate_proj.weight", "gate_proj.bias")
BASE_REDUX_KEYS = ("redux_up.weight", "redux_up.bias", "redux_down.weight", "redux_down.bias")
EXPECTED_LAYOUT = ("an AnyStory checkpoint is a dict with 'ref' (PEFT LoRAs 'transformer.<module>.lora_A/B.weight'), "
                   "'redux' (the redux embedder) and 'router' (router LoRAs, routing-map LoRAs and 'router_embedder.*'), "
                   "like anystory_flux.bin from Hugging Face Junjie96/AnyStory")


class AnyStoryFormatError(CheckpointError):
    """The file is not a usable AnyStory checkpoint; the message says why and what to do."""


# (input, output) width of every diffusers module a stream LoRA may act on, by its site in a block
MODULE_WIDTHS = {
    "x_embedder": ("latent", "hidden"), "context_embedder": ("txt", "hidden"),
    "norm1.linear": ("hidden", "6*hidden"), "norm1_context.linear": ("hidden", "6*hidden"), "norm.linear": ("hidden", "3*hidden"),
    "ff.net.2": ("mlp", "hidden"), "ff_context.net.2": ("mlp", "hidden"), "proj_mlp": ("hidden", "mlp"),
    "proj_out": ("hidden+mlp", "hidden"), "ff.net.0.proj": ("hidden", None), "ff_context.net.0.proj": ("hidden", None),
}
EMBEDDER_SHAPES = {  # Redux: siglip -> 3*txt -> txt; each LoRA of its own rank; a one-channel gate
    "redux_up_lora_A.weight": ("rank up", "siglip"), "redux_up_lora_B.weight": ("3*txt", "rank up"), "redux_up_lora_B.bias": ("3*txt",),
    "redux_down_lora_A.weight": ("rank down", "3*txt"), "redux_down_lora_B.weight": ("txt", "rank down"),
    "redux_down_lora_B.bias": ("txt",), "gate_proj.weight": (1, "txt"), "gate_proj.bias": (1,),
    "redux_up.weight": ("3*txt", "siglip"), "redux_up.bias": ("3*txt",), "redux_down.weight": ("txt", "3*txt"),
    "redux_down.bias": ("txt",),
}


class Widths:
    """The widths a file's shapes imply (``hidden``, ``txt``, ...), each checked against every tensor that shows it, so
    one wrong-shaped tensor is named at load instead of failing a matmul later. A first pass while ``voting`` takes
    each width from most tensors (so the odd one out is the one named); ``known`` widths are fixed."""

    def __init__(self, name: str, error: type[Exception] = AnyStoryFormatError,
                 advice: str = "the file is damaged or not AnyStory's. Download it again.", known: dict[str, int] | None = None):
        self.name, self.error, self.advice, self.values = name, error, advice, dict(known or {})
        self.voting, self.votes = False, collections.defaultdict(collections.Counter)

    def settle(self) -> None:
        """End the vote: every width not known is the one most tensors show."""
        for dim, counts in self.votes.items():
            self.values.setdefault(dim, counts.most_common(1)[0][0])
        self.voting = False

    def _size(self, want, size: int) -> bool:
        if want is None:
            return True
        if isinstance(want, int):
            return size == want
        if want == "hidden+mlp":
            return self.voting or size == self.values.get("hidden", 0) + self.values.get("mlp", 0)
        factor, _, dim = want.rpartition("*")
        factor = int(factor or 1)
        if size <= 0 or size % factor:
            return self.voting
        if self.voting:
            self.votes[dim][size // factor] += 1
            return True
        return self.values.setdefault(dim, size // factor) * factor == size

    def check(self, key: str, tensor: torch.Tensor, *expected) -> None:
        shape = tuple(tensor.shape)
        if len(shape) != len(expected) or not all(self._size(want, size) for want, size in zip(expected, shape)):
            raise self.error(f"{self.name}: {quoted(key)} has shape {list(shape)}, which disagrees with the file's other "
                             f"tensors (expected [{', '.join(str(w or 'any') for w in expected)}] with "
                             f"{', '.join(f'{k} = {v}' for k, v in self.values.items() if not k.startswith('rank')) or 'no width known yet'}); "
                             f"{self.advice}")

    def low_rank(self, key: str, delta, widths: tuple) -> None:
        """A LoRA's A [rank, in], B [out, rank] and bias [out]; its own rank, the same in A and B."""
        rank = f"rank of {key}"
        self.check(f"{key}.lora_A", delta.down, rank, widths[0])
        self.check(f"{key}.lora_B", delta.up, widths[1], rank)
        if delta.bias is not None:
            self.check(f"{key}.lora_B.bias", delta.bias, widths[1])


def comfy_target(module: str, hidden: int, out_rows: int) -> tuple[str, tuple[int, int] | None]:
    """The ComfyUI module (path) a diffusers FLUX module lives in, and its output rows there.

    ``out_rows`` is the module's own output width (its LoRA B rows); ``hidden`` the model width.
    Raises KeyError for modules ComfyUI's FLUX has no place for.
    """
    if module == "x_embedder":
        return "img_in", None
    if module == "context_embedder":
        return "txt_in", None
    if match := DOUBLE.match(module):
        index, rest = match.groups()
        prefix = f"double_blocks.{index}."
        name = rest.removeprefix("attn.")
        if name in QKV:
            side = "txt" if name.startswith("add_") else "img"
            start = QKV[name] * out_rows
            return f"{prefix}{side}_attn.qkv", (start, start + out_rows)
        simple = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin", "attn.to_out.0": "img_attn.proj",
                  "attn.to_add_out": "txt_attn.proj", "ff.net.2": "img_mlp.2", "ff_context.net.2": "txt_mlp.2",
                  "ff.net.0.proj": "img_mlp.0", "ff_context.net.0.proj": "txt_mlp.0"}
        return prefix + simple[rest], None
    if match := SINGLE.match(module):
        index, rest = match.groups()
        prefix = f"single_blocks.{index}."
        name = rest.removeprefix("attn.")
        if name in ("to_q", "to_k", "to_v"):
            start = QKV[name] * out_rows
            return f"{prefix}linear1", (start, start + out_rows)
        if rest == "proj_mlp":
            return f"{prefix}linear1", (3 * hidden, 3 * hidden + out_rows)
        simple = {"proj_out": "linear2", "norm.linear": "modulation.lin"}
        return prefix + simple[rest], None
    raise KeyError(module)


def comfy_block(block: str) -> str:
    """'transformer_blocks.3' -> 'double_blocks.3', 'single_transformer_blocks.3' -> 'single_blocks.3'."""
    if block.startswith("single_transformer_blocks."):
        return "single_blocks." + block.rpartition(".")[2]
    return "double_blocks." + block.rpartition(".")[2]


def _site(module: str) -> str:
    if match := DOUBLE.match(module) or SINGLE.match(module):
        return match.group(2)
    return module


def _is_used(stream: str, module: str) -> bool:
    site = _site(module)
    if SINGLE.match(module):
        return site in SINGLE_SITES
    return site in (REF_SITES if stream == "ref" else ROUTER_SITES)


@dataclass(eq=False)
class RoutingLoRA:
    """One block's routing-map deltas: added to the router query and to the image key."""

    query: LowRank
    key: LowRank


@dataclass(eq=False)
class AnyStoryWeights:
    ref: StreamLoRA
    router: StreamLoRA
    routing: dict[str, RoutingLoRA]  # by ComfyUI block path, e.g. "single_blocks.3"
    redux_embedder: dict[str, torch.Tensor]
    router_embedder: dict[str, torch.Tensor]
    hidden_size: int
    ignored: tuple[str, ...] = field(default=())
    widths: dict[str, int] = field(default_factory=dict)  # the widths the file's shapes imply (hidden, txt, siglip, ...)

    def blocks(self) -> tuple[int, int]:
        """(double, single) block counts the routing LoRAs cover."""
        double = sum(1 for k in self.routing if k.startswith("double_blocks."))
        return double, len(self.routing) - double


class AnyStoryLoRAs(nn.Module):
    """The ref, router and routing-map LoRAs as frozen parameters sharing the checkpoint's tensors.

    An ``nn.Module`` so that a ModelPatcher, and thus ComfyUI's memory manager, loads, offloads
    and counts them with the MODEL instead of each run copying them to the device.
    """

    def __init__(self, weights: AnyStoryWeights):
        super().__init__()
        self.ref = StreamLoRAWeights(weights.ref)
        self.router = StreamLoRAWeights(weights.router)
        self.routing_blocks = tuple(weights.routing)
        self.routing = nn.ModuleList(nn.ModuleList((LowRankWeights(r.query), LowRankWeights(r.key)))
                                     for r in weights.routing.values())

    def on(self, device, dtype) -> tuple[StreamLoRA, StreamLoRA, dict[str, RoutingLoRA]]:
        """(ref, router, routing) on ``device`` in ``dtype``; casts only what is elsewhere or in another dtype."""
        routing = {block: RoutingLoRA(query.low_rank(device, dtype), key.low_rank(device, dtype))
                   for block, (query, key) in zip(self.routing_blocks, self.routing)}
        return self.ref.stream_lora(device, dtype), self.router.stream_lora(device, dtype), routing


def split_parts(flat: dict[str, torch.Tensor], name: str) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {"ref": {}, "redux": {}, "router": {}}
    for key, tensor in flat.items():
        head, _, rest = key.partition(".")
        if head in parts and rest:
            parts[head][rest] = tensor
    missing = [p for p, d in parts.items() if not d]
    if missing:
        raise AnyStoryFormatError(f"{name} lacks the '{', '.join(missing)}' part(s); {EXPECTED_LAYOUT}")
    return parts


def _stream_loras(stream: str, part: dict[str, torch.Tensor], hidden: int, name: str, ignored: list[str],
                  shapes: list[tuple[str, LowRank, tuple]]) -> StreamLoRA:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in part.items():
        if match := PEFT_KEY.match(key):
            pairs.setdefault(match["module"], {})[match["ab"]] = tensor
    loras = StreamLoRA()
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise AnyStoryFormatError(f"{name}: the {stream} LoRA of '{module}' lacks lora_{'A' if 'A' not in pair else 'B'}; "
                                      "the file is incomplete, download it again")
        if not _is_used(stream, module):
            ignored.append(f"{stream}.{module}")
            continue
        down, up = pair["A"], pair["B"]
        if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
            raise AnyStoryFormatError(f"{name}: the {stream} LoRA of {quoted(module)} has ranks that disagree (lora_A "
                                      f"{list(down.shape)}, lora_B {list(up.shape)}); download the file again")
        try:
            target, rows = comfy_target(module, hidden, up.shape[0])
        except KeyError:
            raise AnyStoryFormatError(f"{name}: the {stream} LoRA targets '{module}', which FLUX.1 does not have; "
                                      f"{EXPECTED_LAYOUT}") from None
        shapes.append((f"{stream}.{module}", LowRank(down, up), MODULE_WIDTHS.get(_site(module), ("hidden", "hidden"))))
        loras.add(target, LowRank(down, up, None, rows))
    if not loras.deltas:
        raise AnyStoryFormatError(f"{name}: the '{stream}' part holds no LoRA; {EXPECTED_LAYOUT}")
    return loras


def _routing_loras(part: dict[str, torch.Tensor], name: str) -> dict[str, RoutingLoRA]:
    pieces: dict[str, dict[tuple[str, str, str], torch.Tensor]] = {}
    for key, tensor in part.items():
        if match := ROUTING_KEY.match(key):
            pieces.setdefault(match["block"], {})[(match["qk"], match["ab"], match["param"])] = tensor
    routing = {}
    for block, p in pieces.items():
        try:
            query = LowRank(p[("q", "A", "weight")], p[("q", "B", "weight")], p[("q", "B", "bias")])
            key = LowRank(p[("k", "A", "weight")], p[("k", "B", "weight")], p[("k", "B", "bias")])
        except KeyError as e:
            raise AnyStoryFormatError(f"{name}: the routing-map LoRA of '{block}' lacks {e.args[0]}; download the file again") from None
        routing[comfy_block(block)] = RoutingLoRA(query, key)
    if not routing:
        raise AnyStoryFormatError(f"{name}: the 'router' part holds no routing-map LoRA "
                                  "('transformer.<block>.attn.processor.to_q_routing_map_lora_A.weight'); " + EXPECTED_LAYOUT)
    return routing


def _embedder(part: dict[str, torch.Tensor], label: str, name: str) -> dict[str, torch.Tensor]:
    missing = [k for k in EMBEDDER_LORA_KEYS if k not in part]
    if missing:
        raise AnyStoryFormatError(f"{name}: the {label} lacks {', '.join(missing[:3])}; download the file again")
    return {k: part[k] for k in EMBEDDER_LORA_KEYS + BASE_REDUX_KEYS if k in part}


def check_embedder(widths: Widths, label: str, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of a redux or router embedder (and of Redux itself) in the widths the file's others imply."""
    for key, tensor in state.items():
        widths.check(f"{label}.{key}", tensor, *(f"{w} of {label}" if isinstance(w, str) and w.startswith("rank") else w
                                                 for w in EMBEDDER_SHAPES[key]))


def _check_blocks(routing: dict[str, RoutingLoRA], streams: tuple[StreamLoRA, ...], name: str) -> None:
    """Routing-map LoRAs on blocks 0..n-1 of each kind, and no stream LoRA on a block they do not cover."""
    double = sum(1 for k in routing if k.startswith("double_blocks."))
    expected = {f"double_blocks.{i}" for i in range(double)} | {f"single_blocks.{i}" for i in range(len(routing) - double)}
    if set(routing) != expected:
        raise AnyStoryFormatError(f"{name}: the routing-map LoRAs are on blocks {sorted(set(routing) - expected)[:4]} but cover "
                                  f"{double} double and {len(routing) - double} single blocks (numbered from 0); "
                                  "the file is damaged or not AnyStory's. Download it again.")
    for stream in streams:
        for target in stream.targets():
            block = ".".join(target.split(".")[:2])
            if block.startswith(("double_blocks.", "single_blocks.")) and block not in routing:
                raise AnyStoryFormatError(f"{name}: a LoRA acts on {quoted(block)}, which the file's routing-map LoRAs do "
                                          "not cover; the file is damaged or not AnyStory's. Download it again.")


def build_weights(flat: dict[str, torch.Tensor], name: str = "checkpoint") -> AnyStoryWeights:
    """The file's LoRAs and embedders, every shape checked against the widths the file itself implies."""
    parts = split_parts(flat, name)
    require_floating(flat, name, AnyStoryFormatError, "AnyStory", "use anystory_flux.bin or a conversion by scripts/convert_anystory.py.")
    redux = _embedder(parts["redux"], "redux embedder", name)
    router_embedder = _embedder({k.removeprefix("router_embedder."): v for k, v in parts["router"].items()
                                 if k.startswith("router_embedder.")}, "router embedder", name)
    routing = _routing_loras(parts["router"], name)
    shapes = [(f"router.{block} routing map ({which})", lora, ("hidden", "hidden"))
              for block, pair in routing.items() for which, lora in (("query", pair.query), ("key", pair.key))]
    hidden = collections.Counter(pair.query.up.shape[0] for pair in routing.values()).most_common(1)[0][0]
    ignored: list[str] = []
    ref = _stream_loras("ref", parts["ref"], hidden, name, ignored, shapes)
    router = _stream_loras("router", parts["router"], hidden, name, ignored, shapes)
    widths = Widths(name)
    for voting in (True, False):
        widths.voting = voting
        for key, lora, expected in shapes:
            widths.low_rank(key, lora, expected)
        check_embedder(widths, "redux", redux)
        check_embedder(widths, "router.router_embedder", router_embedder)
        if voting:
            widths.settle()
    _check_blocks(routing, (ref, router), name)
    if ignored:
        log.info("%s: %d LoRA module(s) the official forward never switches on are ignored (e.g. %s)", name, len(ignored), quoted(ignored[0]))
    return AnyStoryWeights(ref, router, routing, redux, router_embedder, hidden, tuple(ignored),
                           {k: v for k, v in widths.values.items() if not k.startswith("rank")})


def load_weights(path: str | Path) -> AnyStoryWeights:
    path = Path(path)
    flat, _ = read_tensors(path, AnyStoryFormatError)
    return build_weights(flat, quoted(path.name))


def recognises(keys) -> bool:
    """An AnyStory file: router embedder and routing-map LoRAs next to a ref part."""
    return (any(k.startswith("router.router_embedder.") for k in keys) and any("routing_map_lora" in k for k in keys)
            and any(k.startswith("ref.") for k in keys))
