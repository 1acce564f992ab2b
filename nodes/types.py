"""Custom socket types passed between the pack's nodes (their names are part of saved workflows)."""

from comfy_api.latest import io

SubjectEncoderSocket = io.Custom("MSP_SUBJECT_ENCODER")
SubjectsSocket = io.Custom("MSP_SUBJECTS")
LayoutSocket = io.Custom("MSP_LAYOUT")
RoutesSocket = io.Custom("MSP_ROUTES")
KindSettingsSocket = io.Custom("MSP_KIND_SETTINGS")

CATEGORY = "multi_subject"
NODE_ID_PREFIX = "MSP_"

# Words an artist types to find the pack's nodes. ComfyUI's node search looks them up in each node's
# search_aliases (ComfyUI and frontends from early 2026); a Schema without the field would refuse it,
# hence the check. Older frontends get the same words from web/node_search_words.js.
SEARCH_ALIASES = ("multi subject", "multi-subject", "subject", "MS-Diffusion", "msdiffusion", "personalization",
                  "personalisation", "SSR-Encoder", "FastComposer", "AnyStory")
SEARCHABLE = {"search_aliases": list(SEARCH_ALIASES)} if "search_aliases" in getattr(io.Schema, "__dataclass_fields__", {}) else {}
