"""Apply Multi-Subject Attention: patch a clone of the MODEL so every subject stays in its box."""

from comfy_api.latest import io

from ..attention_patches.kinds.registry import KINDS
from ..attention_patches.kinds.base import ApplySettings, SubjectSetupError, missing_clip_message
from ..attention_patches.layout import Layout
from ..attention_patches.phrase_tokens import PhraseNotFoundError, locate_phrases
from ..attention_patches.recorder import RouteRecorder
from ..attention_patches.route_preview import RoutePlan
from ..models.safe_text import quoted
from .kind_settings import checked_kind_settings
from .subject_warnings import positive_prompts, show_warnings, subject_warnings, unused_input_warnings
from .types import CATEGORY, SEARCHABLE, KindSettingsSocket, LayoutSocket, RoutesSocket, SubjectEncoderSocket, SubjectsSocket

NODE_NAME = "Apply Multi-Subject Attention"


def parse_subject_scales(text: str) -> tuple[float, ...] | None:
    """"0.5, 0.9" -> (0.5, 0.9); empty -> None (use ``scale`` for every subject)."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        return None
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{NODE_NAME}: subject_scales must be numbers separated by commas, e.g. '0.5, 0.9'; got {quoted(text)}") from None


class ApplyMultiSubjectAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MSP_ApplyMultiSubjectAttention",
            display_name=NODE_NAME,
            category=CATEGORY,
            **SEARCHABLE,
            description="The subjects join the MODEL's attention, each routed to its box, the way the subject encoder's "
            "kind does it. Returns a patched clone of the MODEL for any sampler.",
            inputs=[
                io.Model.Input("model", tooltip="the checkpoint's MODEL (after any LoRA); a patched clone is returned, "
                               "this one stays as it is"),
                SubjectEncoderSocket.Input("subject_encoder", tooltip="from Load Subject Encoder (e.g. ms_adapter.bin)"),
                SubjectsSocket.Input("subjects", tooltip="from the last Encode Reference of the chain: subject i goes in box i"),
                LayoutSocket.Input("layout", optional=True,
                                   tooltip="one box per subject, in subject order (required by "
                                   f"{', '.join(k.title for k in KINDS if k.capabilities.layout == 'required') or 'no kind'}; "
                                   "other kinds act on the whole image without it)"),
                io.Float.Input("scale", default=0.6, min=0.0, max=3.0, step=0.05,
                               tooltip="strength of the subjects (0.6; 0.4 for scene-like subjects)"),
                io.String.Input("subject_scales", default="", optional=True,
                                tooltip="one strength per subject, e.g. '0.5, 0.9'; replaces scale when given"),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="the subjects act from this point of the sampling (0 = the first step; FastComposer: "
                               "where the fused people start, 0 = the official demo's switch)"),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="the subjects act until this point of the sampling (1 = the last step)"),
                io.Boolean.Input("drop_grounding", default=False,
                                 tooltip="ignore phrase and box when resampling (MS-Diffusion's drop_grounding_tokens)"),
                io.Boolean.Input("auto_routing", default=False, optional=True,
                                 tooltip="AUTO ROUTING on/off: refine each subject's route from the model's own attention "
                                 "to its phrase (a pseudo layout) instead of keeping to the boxes. The next three inputs "
                                 "are used only when this is on"),
                io.String.Input("prompt", multiline=True, default="", optional=True,
                                tooltip="AUTO ROUTING and FastComposer: the positive prompt text, to find each subject's "
                                "phrase (wire the same text node into this widget and the positive CLIP Text Encode's text)"),
                io.Float.Input("mask_threshold", default=0.5, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="AUTO ROUTING only: how strongly a pixel must attend to a phrase to join that "
                               "subject's route (0.5 as in MS-Diffusion)"),
                io.Int.Input("start_step", default=5, min=1, max=1000, optional=True,
                             tooltip="AUTO ROUTING only: the boxes route the first steps; the model's own attention "
                             "takes over once this many steps have been seen"),
                io.Float.Input("feather", default=0.0, min=0.0, max=64.0, step=0.5, optional=True,
                               tooltip="soft box edges, in latent pixels (0 = exact MS-Diffusion boxes)"),
                KindSettingsSocket.Input("kind_settings", optional=True,
                                         tooltip="the subject encoder's own settings, from its kind's Settings node "
                                         "(the kind's defaults when not connected)"),
                io.Boolean.Input("record_routes", default=True, optional=True,
                                 tooltip="record the routes the model decides while sampling (auto routing, learned "
                                 "routes) for Router Mask Preview; off saves their time and memory when nothing previews them"),
            ],
            outputs=[io.Model.Output(display_name="model"), RoutesSocket.Output(display_name="routes")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, subject_encoder, subjects, scale: float, start_percent: float, end_percent: float,
                drop_grounding: bool, layout=None, subject_scales: str = "", auto_routing: bool = False, prompt: str = "",
                mask_threshold: float = 0.5, start_step: int = 5, feather: float = 0.0, kind_settings=None,
                record_routes: bool = True) -> io.NodeOutput:
        phrases = [s.phrase for s in subjects]
        capabilities = subject_encoder.capabilities
        if layout is None and capabilities.layout == "required":
            raise SubjectSetupError(f"{NODE_NAME}: {subject_encoder.title} places every subject in a box: connect a "
                                    "Draw Layout Box to 'layout'")
        phrase_tokens = ()
        if auto_routing and capabilities.phrase_tokenizer is not None:  # a kind without phrase grounding says why not
            phrase_tokens = cls._phrase_tokens(subject_encoder, subjects, prompt)
        # box routes are known without sampling; auto and learned routes are recorded while sampling
        recorder = RouteRecorder() if record_routes and (auto_routing or subject_encoder.learned_routes) else None
        try:
            own_settings = checked_kind_settings(subject_encoder, kind_settings)
        except SubjectSetupError as e:
            raise SubjectSetupError(f"{NODE_NAME}: {e}") from None
        unread = [(number, subject.reference) for number, subject in enumerate(subjects, start=1)
                  if subject.reference not in subject_encoder.encodings]  # not encoded (nor warned) on Encode Reference
        settings = ApplySettings(
            scale=scale,
            subject_scales=parse_subject_scales(subject_scales),
            start_percent=start_percent,
            end_percent=end_percent,
            drop_grounding=drop_grounding,
            feather=feather,
            auto_routing=auto_routing,
            phrase_tokens=phrase_tokens,
            mask_threshold=mask_threshold,
            start_step=start_step,
            prompt=prompt,
            kind_settings=own_settings,
        )
        try:
            patched = subject_encoder.apply(model, tuple(subjects), layout, settings, recorder)
        except SubjectSetupError as e:
            raise SubjectSetupError(f"{NODE_NAME}: {e}") from None
        labels = [box.label for box in layout.boxes] if layout is not None else []
        hidden = cls.hidden
        positive = positive_prompts(hidden.prompt, hidden.unique_id) if hidden is not None else []
        node_id = hidden.unique_id if hidden is not None else None
        warnings = subject_warnings(phrases, labels, positive + ([prompt] if auto_routing else []), subject_encoder)
        warnings += [f"subject {number}: {w}" for number, reference in unread for w in unused_input_warnings(subject_encoder, reference)]
        show_warnings(NODE_NAME, node_id, warnings + subject_encoder.binding_notes(tuple(subjects), layout))
        shown = layout if layout is not None else Layout.whole_image(len(phrases))
        return io.NodeOutput(patched, RoutePlan(shown, tuple(phrases), subject_encoder.preview_downscales, feather, recorder))

    @staticmethod
    def _phrase_tokens(encoder, subjects, prompt: str):
        """Each subject's token positions in ``prompt``, found with the kind's phrase tokenizer (named in errors)."""
        found_with = f"{encoder.title} finds each phrase with {encoder.capabilities.phrase_tokenizer}"
        if not prompt.strip():
            raise ValueError(
                f"{NODE_NAME}: auto routing needs the positive prompt text in 'prompt' to find each subject's phrase: "
                "type the same text as the positive CLIP Text Encode, or drag a link from one text node (e.g. a String "
                "node) onto both 'prompt' and the CLIP Text Encode's 'text' widget"
            )
        tokenizer = subjects[0].tokenizer if subjects else None
        if tokenizer is None:
            raise ValueError(f"{NODE_NAME}: " + missing_clip_message(f"auto routing: {found_with}"))
        try:
            return locate_phrases(tokenizer, prompt, [s.phrase for s in subjects],
                                  why=f"auto routing follows the model's attention to that phrase ({found_with})")
        except PhraseNotFoundError as e:
            raise PhraseNotFoundError(f"{NODE_NAME}: {e}") from None
