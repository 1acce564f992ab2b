"""The pack's nodes (V3 schema). Node ids carry the MSP_ prefix and are stable: saved workflows use them."""

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .apply_attention import ApplyMultiSubjectAttention
from .draw_layout_box import DrawLayoutBox
from ..attention_patches.kinds.registry import KINDS
from .encode_reference import EncodeReference
from .kind_settings import settings_nodes
from .load_subject_encoder import LoadSubjectEncoder
from .notifier import NOTIFIER
from .paths import create_model_folders, provide_example_images, register_model_folders
from .router_mask_preview import RouterMaskPreview
from .safe_errors import loggable_errors, short_exception_names

register_model_folders()
create_model_folders()
provide_example_images()

NODES: list[type[io.ComfyNode]] = [loggable_errors(node) for node in (
    LoadSubjectEncoder,
    EncodeReference,
    DrawLayoutBox,
    ApplyMultiSubjectAttention,
    RouterMaskPreview,
    *settings_nodes(KINDS),
)]
short_exception_names()


class MultiSubjectExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> MultiSubjectExtension:
    NOTIFIER.connect()  # ComfyUI calls this from its running server
    return MultiSubjectExtension()
