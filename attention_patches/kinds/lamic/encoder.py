"""The LAMIC kind: no weights file; reference i goes in layout box i on an in-context model.

How the five nodes map onto LAMIC:
- Load Subject Encoder lists "LAMIC (in-context layout)" without a file.
- Encode Reference: the image (VAE-encoded in VAE mode when its ``vae`` is connected; otherwise the
  conditioning's ReferenceLatent i is reference i), the ``phrase`` (SAD id) and the ``description``
  (SAD desc): SAD_i = phrase + "," + description + ".".
- Draw Layout Box: box i is reference i's region (normalised boxes, LAMIC's truncation rule; with a MASK
  connected, the painted region itself).
- Apply: ``prompt`` must be the exact text the positive CLIP Text Encode encodes, SAD_1..SAD_n + CEI
  joined without separators (the kind checks the SAD prefix and takes the rest as CEI; nothing is
  rewritten behind the artist's back). ``subject_scales``: per-reference strength in [0, 1] (soft
  mode; 1 = LAMIC's isolation, the default); ``start_percent``/``end_percent``: the window.
- The kind's own settings (its Settings node): ``official`` (LAMIC's span drift), ``first_stage_ratio``,
  ``enhance_factors``, ``to_area`` (VAE mode), ``deoverlap``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from ....models.lamic import groups as lamic_groups
from ....models.lamic import references as lamic_references
from ....models.lamic import regions as lamic_regions
from ....models.lamic.text import joined_prompt, sad_text
from ....models.safe_text import quoted
from ...dit.masked_attention import TokenClasses
from ...dit.token_layout import TokenLayout
from ..base import ApplySettings, Capabilities, Reference, Setting, SubjectEncoder, SubjectSetupError, encodings_of
from . import flux2, kontext, qwen  # noqa: F401  (register the family adapters)
from .families import adapter_for
from .patch import AttentionShareProbe, LamicPatch, Window

log = logging.getLogger("comfyui_multisubject.lamic")

MAX_LIST_TEXT = 400


MAX_CACHED_SIZES = 4  # VAE latents kept per reference (one per to_area tried)


@dataclass(frozen=True, eq=False)
class LamicEncoding:
    """One reference as LAMIC uses it: its SAD text and, in VAE mode, the image to encode.

    The VAE runs on Apply, not on Encode Reference: the size chain depends on the kind's
    ``to_area`` setting, which only Apply receives.
    """

    sad: str  # SAD_i as LAMIC writes it
    pixels: torch.Tensor | None = None  # [1, H, W, 3] in 0..1 (VAE mode), or None: the conditioning brings the reference
    vae: object = None
    _latents: dict = field(default_factory=dict, repr=False)

    def latent(self, to_area: float | None = None) -> torch.Tensor | None:
        """The raw VAE latent [1, C, h, w] (VAE mode) after LAMIC's size chain, or None without a VAE."""
        if self.pixels is None:
            return None
        if to_area not in self._latents:
            try:
                pixels = lamic_references.resize_reference(self.pixels, to_area)
            except ValueError as e:
                raise SubjectSetupError(str(e)) from None
            if len(self._latents) >= MAX_CACHED_SIZES:
                del self._latents[next(iter(self._latents))]
            self._latents[to_area] = self.vae.encode(pixels).float().cpu()
        return self._latents[to_area]


def bounded(name: str, text: str) -> str:
    """``text`` itself, or an error: a list longer than any real one is refused rather than cut (a cut changes its meaning)."""
    if len(text) > MAX_LIST_TEXT:
        raise SubjectSetupError(f"{name} is {len(text)} characters long; at most {MAX_LIST_TEXT} are read: shorten it")
    return text


def parse_factors(text: str, count: int) -> tuple[float, ...]:
    """'1, 1.3, 1' -> one enhance factor per reference (empty: all 1)."""
    parts = [p.strip() for p in bounded("enhance_factors", text).split(",") if p.strip()]
    if not parts:
        return (1.0,) * count
    try:
        factors = tuple(float(p) for p in parts)
    except ValueError:
        raise SubjectSetupError(f"enhance_factors must be numbers separated by commas, e.g. '1, 1.3'; got {quoted(text[:60])}") from None
    if len(factors) != count or not all(math.isfinite(f) and 0.0 < f <= 10.0 for f in factors):
        raise SubjectSetupError(f"enhance_factors needs {count} numbers in (0, 10], one per reference; got {quoted(text[:60])}")
    return factors


def parse_areas(text: str, count: int) -> tuple[float | None, ...]:
    """'0, 2304' -> per reference, LAMIC's ``to_area`` in pixels or None (0 or empty: off, the official default).

    One number applies to every reference.
    """
    parts = [p.strip() for p in bounded("to_area", text).split(",") if p.strip()]
    if not parts:
        return (None,) * count
    limit = lamic_references.MAX_REFERENCE_PIXELS
    try:
        areas = tuple(float(p) for p in parts)
    except ValueError:
        areas = ()
    if len(areas) == 1:
        areas *= count
    if len(areas) != count or not all(math.isfinite(a) and 0.0 <= a <= limit for a in areas):
        raise SubjectSetupError(f"to_area needs one number of pixels from 0 to {limit} (0 = off), or one per reference "
                                f"({count}), e.g. '0, 262144'; got {quoted(text[:60])}")
    return tuple(a or None for a in areas)


def parse_deoverlap(text: str, count: int) -> tuple[tuple[int, ...], ...]:
    """'2: 1; 3: 1, 2' -> per reference, the references whose regions it gives up in stage 1."""
    out: list[tuple[int, ...]] = [() for _ in range(count)]
    for part in (p.strip() for p in bounded("deoverlap", text).split(";") if p.strip()):
        target, _, others = part.partition(":")
        try:
            i = int(target)
            js = tuple(int(j) for j in others.split(",") if j.strip())
        except ValueError:
            raise SubjectSetupError(f"deoverlap must look like '2: 1; 3: 1, 2' (reference: the references it yields to); "
                                    f"got {quoted(part[:60])}") from None
        if not 1 <= i <= count or not js or any(not 1 <= j <= count or j == i for j in js):
            raise SubjectSetupError(f"deoverlap {quoted(part[:60])}: references are numbered 1 to {count}, and one "
                                    "cannot yield to itself")
        out[i - 1] = js
    return tuple(out)


def normalised_boxes(layout) -> torch.Tensor:
    """[N, 4] boxes as fractions of the image, so the regions follow every pass's latent size (hires fix).

    LAMIC reads a box with a coordinate above 1 as pixels; such a box is divided by the size the layout
    is drawn for (its width/height) rather than kept at fixed pixels of whatever latent a pass samples.
    """
    boxes = layout.tensor()
    pixels = (boxes > 1.0).any(1)
    size = torch.tensor([layout.width, layout.height, layout.width, layout.height], dtype=boxes.dtype)
    boxes[pixels] = (boxes[pixels] / size).clamp(0.0, 1.0)
    return boxes


def output_size_notes(height: int, width: int) -> list[str]:
    """LAMIC's output-size warning: the official script samples at ``resize_output_size`` (about 1 MP).

    The pack never changes the artist's latent; it says which size the official run would use when the
    layout's size (Draw Layout Box's width/height, the size the boxes are drawn for) differs.
    """
    official = lamic_references.output_size(height, width)
    if official == (height, width):
        return []
    return [f"LAMIC output size: the official script would sample this {width}x{height} layout at {official[1]}x"
            f"{official[0]} (about 1 MP, multiples of 16); the latent size stays yours. For the official run set "
            f"Empty Latent Image and Draw Layout Box to {official[1]}x{official[0]}"]


class LamicEncoder(SubjectEncoder):
    kind = "lamic"
    title = "LAMIC (in-context layout)"
    base_model = "FLUX.1 Kontext"
    model_folders = ()
    builtin_name = "LAMIC (no weights file)"
    capabilities = Capabilities(
        needs_file=False,
        layout="required",
        reference_inputs=frozenset({"vae", "description"}),
        phrase_tokenizer="T5 (FLUX.1 Kontext)",
        settings=(
            Setting("official", "BOOLEAN", True, tooltip="LAMIC's own text spans (they drift from the encoded tokens, "
                    "as in the official code); off: the pieces' exact positions"),
            Setting("first_stage_ratio", "FLOAT", 0.05, min=0.0, max=1.0, step=0.01,
                    tooltip="the first int(ratio x steps) steps use the stage-1 mask (regions isolated); official 0.05"),
            Setting("enhance_factors", "STRING", "", tooltip="one factor per reference scaling its latent, e.g. '1, 1.3'; "
                    "empty = 1 for all"),
            Setting("deoverlap", "STRING", "", tooltip="stage 1 only: where boxes overlap, reference i yields to others, "
                    "e.g. '2: 1; 3: 1, 2'"),
            Setting("to_area", "STRING", "", tooltip="VAE-encoded references only: scale reference i to about this many "
                    "pixels before the multiple-of-16 floor (LAMIC's per-reference to_area), e.g. '0, 262144'; one number "
                    "for all; 0 or empty = off (official default)"),
        ),
    )
    preview_downscales = (2,)  # one token per 2x2 latent pixels
    learned_routes = True  # previewed: where each reference's attention went, measured while sampling

    def __init__(self):
        self.name = self.builtin_name

    @classmethod
    def recognises(cls, keys) -> bool:
        return False

    @classmethod
    def load(cls, path):
        return cls()

    @classmethod
    def builtin(cls) -> LamicEncoder:
        return cls()

    @torch.no_grad()
    def encode(self, reference: Reference) -> LamicEncoding:
        if not reference.phrase.strip():
            raise SubjectSetupError("LAMIC needs each reference's phrase (its SAD id, e.g. 'a corgi')")
        sad = sad_text({"id": reference.phrase, "desc": reference.description} if reference.description else reference.phrase)
        if reference.vae is None:
            return LamicEncoding(sad)
        if reference.pixels.shape[0] > 1:
            log.info("LAMIC encodes one view per reference; the first of %d is used", reference.pixels.shape[0])
        pixels = reference.pixels[:1, ..., :3]
        try:  # a reference too small for any size chain is named here, on Encode Reference
            lamic_references.reference_sizes(pixels.shape[1], pixels.shape[2])
        except ValueError as e:
            raise SubjectSetupError(str(e)) from None
        return LamicEncoding(sad, pixels, reference.vae)

    def apply(self, model, subjects, layout, settings: ApplySettings, recorder=None):
        adapter = adapter_for(model)
        own = self.own_settings(settings)
        if not subjects:
            raise SubjectSetupError("no references: connect Encode Reference (one per reference image)")
        if layout is None:
            raise SubjectSetupError("LAMIC places reference i in box i: connect Draw Layout Box with one box per reference")
        count = len(subjects)
        if len(layout.boxes) != count:
            raise SubjectSetupError(f"the layout has {len(layout.boxes)} box(es) for {count} reference(s); draw one box per "
                                    "Encode Reference, in the same order")
        if settings.auto_routing:
            raise SubjectSetupError("LAMIC routes by its layout masks; turn auto_routing off")
        encodings = encodings_of(self, tuple(subjects))
        sads = [e.sad for e in encodings]
        cei = self.cei(sads, settings.prompt) if adapter.reads_texts else ""
        encoded = [e.pixels is not None for e in encodings]
        if any(encoded) and not all(encoded):
            raise SubjectSetupError("connect the VAE to every Encode Reference, or to none (then the conditioning's "
                                    "ReferenceLatent nodes bring the references)")
        references = None
        if not any(encoded) and own["to_area"].strip():
            log.warning("LAMIC: to_area resizes the references Encode Reference encodes with its vae; the conditioning's "
                        "ReferenceLatent references are used as they are")
        if all(encoded):
            latent_format = model.model.latent_format
            areas = parse_areas(own["to_area"], count)
            references = [latent_format.process_in(e.latent(area)) for e, area in zip(encodings, areas)]
        if adapter.text_tokens is not None:  # a text over the model's tokens is refused here, before sampling
            adapter.text_layout(sads, cei, adapter.text_tokens, own["official"])
        strengths = self.strengths(settings, count)
        masks = LamicMasks(adapter, sads, cei, normalised_boxes(layout), parse_deoverlap(own["deoverlap"], count), strengths,
                           own["official"], layout.regions)
        patch = LamicPatch(adapter, count, masks, own["first_stage_ratio"], parse_factors(own["enhance_factors"], count),
                           references, Window(settings.start_percent, settings.end_percent),
                           AttentionShareProbe(recorder) if recorder is not None else None)
        patched = model.clone()
        patch.install(patched)
        return patched

    def binding_notes(self, subjects, layout) -> list[str]:
        """Which reference goes in which box, for the Apply node (reference i = Encode Reference i = ReferenceLatent i)."""
        notes = []
        for number, subject in enumerate(subjects, start=1):
            box = layout.boxes[number - 1] if layout is not None and number <= len(layout.boxes) else None
            where = "no box" if box is None else f"box {number}" + (f" {quoted(box.label[:40])}" if box.label else "")
            notes.append(f"reference {number} ({quoted(subject.phrase[:40])}; the conditioning's ReferenceLatent "
                         f"{number} when Encode Reference has no VAE) -> {where}")
        if layout is not None:
            notes += output_size_notes(layout.height, layout.width)
        return notes

    @staticmethod
    def cei(sads: list[str], prompt: str) -> str:
        """The CEI: what follows the SAD texts in Apply's ``prompt`` (the text the artist encodes)."""
        prefix = joined_prompt(sads, "")
        if not prompt.startswith(prefix):
            raise SubjectSetupError(
                "LAMIC reads each reference's text (SAD) and the scene (CEI) from the text you encode: Apply's 'prompt' "
                "must be that exact text, starting with the references' texts joined without separators: "
                f"{quoted(prefix[:300])} followed by the scene description. Wire one text node into both Apply's prompt "
                "and the positive CLIP Text Encode")
        return prompt[len(prefix):]

    @staticmethod
    def strengths(settings: ApplySettings, count: int) -> tuple[float, ...] | None:
        """Per-reference strengths in [0, 1] from subject_scales (None: LAMIC's full isolation)."""
        scales = settings.subject_scales
        if scales is None:
            return None
        if len(scales) != count or any(s > 1.0 for s in scales):
            raise SubjectSetupError(f"subject_scales: LAMIC takes one strength from 0 to 1 per reference ({count}); "
                                    f"got {len(scales)} value(s)")
        return None if all(s == 1.0 for s in scales) else tuple(scales)


class LamicMasks:
    """LAMIC's stage masks of one call layout, as token classes (``models.lamic``)."""

    def __init__(self, adapter, sads, cei, boxes: torch.Tensor, deoverlap, strengths, official: bool, regions=None):
        self.adapter, self.sads, self.cei, self.boxes = adapter, list(sads), cei, boxes
        self.regions = regions if regions is not None else (None,) * boxes.shape[0]  # MASK regions, where the layout has them
        self.deoverlap, self.strengths, self.official = deoverlap, strengths, official

    def __call__(self, layout: TokenLayout, stage: int) -> TokenClasses:
        text = self.adapter.call_text_layout(layout, self.sads, self.cei, self.official)
        cells = layout.target_cells or (layout.target_grid[0] * 2, layout.target_grid[1] * 2)
        grid = lamic_regions.RegionGrid(cells[0], cells[1], patch=self.adapter.patch_size)
        regions = [lamic_regions.box_region(grid, box.tolist()) if region is None else lamic_regions.mask_region(grid, region)
                   for box, region in zip(self.boxes, self.regions)]
        try:
            groups = lamic_groups.token_groups(text, regions, layout.references, self.deoverlap)
        except ValueError as e:
            raise SubjectSetupError(str(e)) from None
        mask = lamic_groups.stage_mask(groups, stage)
        table = mask.allowed if self.strengths is None else lamic_groups.soft_bias(mask, groups.groups, self.strengths)
        return TokenClasses(mask.class_ids, table)
