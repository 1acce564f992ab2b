"""Encode Reference: one subject (views + phrase) appended to the subject list, for any kind of encoder."""

import torch

import folder_paths
from comfy_api.latest import io

from ..attention_patches.kinds.base import Reference, Subject, SubjectSetupError
from ..attention_patches.layout import parse_single_box
from ..attention_patches.references import checked_description, checked_phrase, segment_views, split_reference
from ..attention_patches.kinds.registry import KINDS
from .paths import SAM_FOLDER
from .subject_warnings import readers, show_warnings, unused_input_warnings
from .types import CATEGORY, SEARCHABLE, SubjectEncoderSocket, SubjectsSocket

NODE_NAME = "Encode Reference"
NO_BACKGROUND_REMOVAL = "none"


class EncodeReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MSP_EncodeReference",
            display_name=NODE_NAME,
            category=CATEGORY,
            **SEARCHABLE,
            description="One subject: its reference image(s) and its phrase. Chain several to build the subject list; "
            "their order is the order of the layout boxes. Encoded by the subject encoder's kind, here when subject_encoder "
            "is connected, otherwise in Apply. Each input's tooltip names the kinds that read it.",
            inputs=[
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="the image encoder the kind encodes the reference with (Load CLIP Vision; the "
                                    f"README names the file per kind); {readers(KINDS, 'clip_vision')}"),
                io.Clip.Input("clip", optional=True,
                              tooltip="the checkpoint's CLIP, for kinds that encode the phrase or the query with it; "
                              + readers(KINDS, "clip")),
                io.Image.Input("image", tooltip="the subject; a batch is several views of the same subject (averaged)"),
                io.String.Input("phrase", default="", tooltip="the subject's noun as it appears in the prompt, e.g. 'dog'"),
                io.Mask.Input("mask", optional=True, tooltip="white = subject; the background is blanked before encoding"),
                io.Custom("MSP_SUBJECTS").Input("subjects", optional=True, tooltip="subjects encoded so far"),
                io.Combo.Input(
                    "background_removal",
                    options=[NO_BACKGROUND_REMOVAL] + folder_paths.get_filename_list(SAM_FOLDER),
                    default=NO_BACKGROUND_REMOVAL,
                    optional=True,
                    tooltip="a segment-anything model from models/sams cuts the subject out of the reference",
                ),
                io.String.Input(
                    "sam_box", default="", optional=True,
                    tooltip="where the subject is in the reference for SAM: x1,y1,x2,y2 as fractions (empty = whole image); "
                    "a connected mask is used instead when given",
                ),
                SubjectEncoderSocket.Input("subject_encoder", optional=True,
                                           tooltip="encode here with this encoder (errors show on this node); "
                                           "without it, Apply encodes the subject"),
                io.Vae.Input("vae", optional=True,
                             tooltip=f"for kinds that encode the reference with the VAE; {readers(KINDS, 'vae')}"),
                io.String.Input("query", default="", optional=True,
                                tooltip="for kinds that pick the subject inside the reference by text: the words that "
                                f"select it; empty = the phrase; {readers(KINDS, 'query')}"),
                io.Float.Input("mask_weight", default=5.0, min=0.0, max=20.0, step=0.1, optional=True,
                               tooltip="for kinds that pick the subject inside the reference by the mask: how strongly the "
                               f"mask picks it (official default 5; its mask demo uses 1); {readers(KINDS, 'mask_weight')}"),
                io.String.Input("description", default="", multiline=True, optional=True, force_input=True,
                                tooltip="a description of the subject, for kinds that condition each reference on its "
                                f"own text (connect a text node, e.g. String (Multiline)); {readers(KINDS, 'description')}"),
            ],
            outputs=[
                SubjectsSocket.Output(display_name="subjects"),
                io.Mask.Output(display_name="mask", tooltip="the mask actually applied to the reference"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, image, phrase: str, clip=None, clip_vision=None, mask=None, subjects=None,
                background_removal: str = NO_BACKGROUND_REMOVAL, sam_box: str = "", subject_encoder=None, vae=None,
                query: str = "", mask_weight: float = 5.0, description: str = "") -> io.NodeOutput:
        phrase, query = checked_phrase(phrase), checked_phrase(query, "query", optional=True)
        description = checked_description(description)
        rgb, subject_mask = split_reference(image, mask)
        if background_removal != NO_BACKGROUND_REMOVAL:
            box = parse_single_box(sam_box, "sam_box") if sam_box.strip() else None
            subject_mask = segment_views(folder_paths.get_full_path_or_raise(SAM_FOLDER, background_removal), rgb, box, subject_mask)
        reference = Reference(phrase, rgb.float().cpu(), None if subject_mask is None else subject_mask.float().cpu(),
                              clip_vision=clip_vision, clip=clip, vae=vae, query=query,
                              mask_weight=mask_weight, description=description)
        subject = Subject(reference)
        if subject_encoder is not None:
            try:
                subject.encoded(subject_encoder)
            except SubjectSetupError as e:
                raise SubjectSetupError(f"{NODE_NAME}: {e}") from None
            node_id = cls.hidden.unique_id if cls.hidden is not None else None
            show_warnings(NODE_NAME, node_id, unused_input_warnings(subject_encoder, reference))
        if subject_mask is None:
            subject_mask = torch.ones(rgb.shape[:3])
        return io.NodeOutput(tuple(subjects or ()) + (subject,), subject_mask.cpu())
