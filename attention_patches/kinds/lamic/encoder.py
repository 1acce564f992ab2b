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
  ``enhance_factors``, ``deoverlap``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

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


@dataclass(frozen=True, eq=False)
class LamicEncoding:
    latent: torch.Tensor | None  # [1, C, h, w] raw VAE latent (VAE mode), or None: the conditioning brings it
    sad: str  # SAD_i as LAMIC writes it


def parse_factors(text: str, count: int) -> tuple[float, ...]:
    """'1, 1.3, 1' -> one enhance factor per reference (empty: all 1)."""
    parts = [p.strip() for p in text[:MAX_LIST_TEXT].split(",") if p.strip()]
    if not parts:
        return (1.0,) * count
    try:
        factors = tuple(float(p) for p in parts)
    except ValueError:
        raise SubjectSetupError(f"enhance_factors must be numbers separated by commas, e.g. '1, 1.3'; got {quoted(text[:60])}") from None
    if len(factors) != count or not all(math.isfinite(f) and 0.0 < f <= 10.0 for f in factors):
        raise SubjectSetupError(f"enhance_factors needs {count} numbers in (0, 10], one per reference; got {quoted(text[:60])}")
    return factors


def parse_deoverlap(text: str, count: int) -> tuple[tuple[int, ...], ...]:
    """'2: 1; 3: 1, 2' -> per reference, the references whose regions it gives up in stage 1."""
    out: list[tuple[int, ...]] = [() for _ in range(count)]
    for part in (p.strip() for p in text[:MAX_LIST_TEXT].split(";") if p.strip()):
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
        latent = None
        if reference.vae is not None:
            if reference.pixels.shape[0] > 1:
                log.info("LAMIC encodes one view per reference; the first of %d is used", reference.pixels.shape[0])
            try:
                pixels = lamic_references.resize_reference(reference.pixels[:1])
            except ValueError as e:
                raise SubjectSetupError(str(e)) from None
            latent = reference.vae.encode(pixels[..., :3]).float().cpu()
        return LamicEncoding(latent, sad)

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
        encoded = [e.latent is not None for e in encodings]
        if any(encoded) and not all(encoded):
            raise SubjectSetupError("connect the VAE to every Encode Reference, or to none (then the conditioning's "
                                    "ReferenceLatent nodes bring the references)")
        references = None
        if all(encoded):
            latent_format = model.model.latent_format
            references = [latent_format.process_in(e.latent) for e in encodings]
        if adapter.text_tokens is not None:  # a text over the model's tokens is refused here, before sampling
            adapter.text_layout(sads, cei, adapter.text_tokens, own["official"])
        strengths = self.strengths(settings, count)
        masks = LamicMasks(adapter, sads, cei, layout.tensor(), parse_deoverlap(own["deoverlap"], count), strengths,
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
