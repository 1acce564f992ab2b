"""API prompts for the server tests, built node by node."""

from __future__ import annotations

import json


class Graph:
    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    def prompt(self) -> dict:
        return json.loads(json.dumps(self.nodes))


def out(node_id: str, index: int = 0) -> list:
    return [node_id, index]


def two_subject_graph(boxes=None, width=192, height=128, steps=2, cfg=5.0, preview=True, encoder="ms_adapter.bin",
                      auto_routing=False, phrases=("dog", "cat"), prompt="a dog and a cat on a lawn") -> Graph:
    g = Graph()
    ckpt = g.add("MSPTest_TinyCheckpointLoader", ckpt_name="sd_xl_base_1.0.safetensors")
    vision = g.add("MSPTest_TinyCLIPVisionLoader", clip_name="clip_vision_g.safetensors", variant="bigG")
    encoder_node = g.add("MSP_LoadSubjectEncoder", encoder_name=encoder)
    subjects = None
    for phrase, image_name in zip(phrases, ("dog.png", "cat.png")):
        image = g.add("LoadImage", image=image_name)
        inputs = dict(clip_vision=out(vision), clip=out(ckpt, 1), image=out(image), phrase=phrase)
        if subjects is not None:
            inputs["subjects"] = out(subjects)
        subjects = g.add("MSP_EncodeReference", **inputs)
    boxes = boxes if boxes is not None else [{"x1": 0, "y1": 0.25, "x2": 0.4, "y2": 0.75, "label": phrases[0]},
                                             {"x1": 0.6, "y1": 0.25, "x2": 1, "y2": 0.75, "label": phrases[1]}]
    layout = g.add("MSP_DrawLayoutBox", boxes=json.dumps(boxes), width=width, height=height, preset="custom")
    apply = g.add("MSP_ApplyMultiSubjectAttention", model=out(ckpt), subject_encoder=out(encoder_node), subjects=out(subjects),
                  layout=out(layout), scale=0.6, subject_scales="", start_percent=0.0, end_percent=1.0, drop_grounding=False,
                  auto_routing=auto_routing, prompt=prompt, mask_threshold=0.5, start_step=1, feather=0.0)
    positive = g.add("CLIPTextEncode", text=prompt, clip=out(ckpt, 1))
    negative = g.add("CLIPTextEncode", text="blurry", clip=out(ckpt, 1))
    latent = g.add("EmptyLatentImage", width=width, height=height, batch_size=1)
    sampler = g.add("KSampler", model=out(apply), seed=1, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
                    positive=out(positive), negative=out(negative), latent_image=out(latent), denoise=1.0)
    decoded = g.add("VAEDecode", samples=out(sampler), vae=out(ckpt, 2))
    g.add("SaveImage", images=out(decoded), filename_prefix="msp_test")
    if preview:
        g.add("MSP_RouterMaskPreview", routes=out(apply, 1), latent=out(sampler), image=out(decoded), steps="final")
    return g
