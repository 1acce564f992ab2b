"""Custom socket types passed between the pack's nodes (their names are part of saved workflows)."""

from comfy_api.latest import io

SubjectEncoderSocket = io.Custom("MSP_SUBJECT_ENCODER")
SubjectsSocket = io.Custom("MSP_SUBJECTS")
LayoutSocket = io.Custom("MSP_LAYOUT")
RoutesSocket = io.Custom("MSP_ROUTES")

CATEGORY = "multi_subject"
NODE_ID_PREFIX = "MSP_"
