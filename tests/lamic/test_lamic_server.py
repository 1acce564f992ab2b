"""A Kontext workflow with LAMIC on the real server: core's ReferenceLatent and T5TokenizerOptions, the five nodes."""

from __future__ import annotations

import json

from graphs import Graph, out

PROMPT = "a dog,sitting.a cat,lying.on a lawn"
BOXES = [{"x1": 0, "y1": 0.25, "x2": 0.5, "y2": 1, "label": "a dog"}, {"x1": 0.5, "y1": 0, "x2": 1, "y2": 0.75, "label": "a cat"}]


def kontext_graph(min_length: int = 512) -> tuple[Graph, str, str]:
    g = Graph()
    model = g.add("MSPTest_TinyFluxLoader", unet_name="flux1-kontext-dev.safetensors", weight_dtype="default")
    clip = g.add("MSPTest_TinyFluxClipLoader", clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux")
    clip = g.add("T5TokenizerOptions", clip=out(clip), min_padding=0, min_length=min_length)
    vae = g.add("MSPTest_TinyFluxVAELoader", vae_name="ae.safetensors")
    text = g.add("PrimitiveStringMultiline", value=PROMPT)
    positive = g.add("CLIPTextEncode", text=out(text), clip=out(clip))
    subjects = None
    for image_name, phrase, description in (("dog.png", "a dog", "sitting"), ("cat.png", "a cat", "lying")):
        image = g.add("LoadImage", image=image_name)
        latent = g.add("VAEEncode", pixels=out(image), vae=out(vae))
        positive = g.add("ReferenceLatent", conditioning=out(positive), latent=out(latent))
        inputs = dict(image=out(image), phrase=phrase, description=description)
        if subjects is not None:
            inputs["subjects"] = out(subjects)
        subjects = g.add("MSP_EncodeReference", **inputs)
    encoder = g.add("MSP_LoadSubjectEncoder", encoder_name="LAMIC (no weights file)")
    layout = g.add("MSP_DrawLayoutBox", boxes=json.dumps(BOXES), width=64, height=64, preset="custom")
    apply = g.add("MSP_ApplyMultiSubjectAttention", model=out(model), subject_encoder=out(encoder), subjects=out(subjects),
                  layout=out(layout), scale=0.6, subject_scales="", start_percent=0.0, end_percent=1.0, drop_grounding=False,
                  prompt=out(text))
    latent = g.add("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    sampler = g.add("KSampler", model=out(apply), seed=1, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
                    positive=out(positive), negative=out(positive), latent_image=out(latent), denoise=1.0)
    decoded = g.add("VAEDecode", samples=out(sampler), vae=out(vae))
    g.add("MSP_RouterMaskPreview", routes=out(apply, 1), latent=out(sampler), image=out(decoded), steps="final")
    return g, apply, sampler


def test_kontext_workflow_runs_and_a_wrong_text_length_is_a_named_error(comfy_server):
    graph, apply, sampler = kontext_graph()
    texts = []
    history = comfy_server.run(graph.prompt(), timeout=240,
                               on_event=lambda kind, data: texts.append(data) if kind == "progress_text" else None)
    assert history["status"]["status_str"] == "success", history["status"]
    shown = " ".join(t["text"] for t in texts if t["node"] == apply)
    assert "reference 1 ('a dog'" in shown and "-> box 2 'a cat'" in shown, shown
    graph, apply, sampler = kontext_graph(min_length=256)  # the default FLUX T5 length
    status = comfy_server.run(graph.prompt(), timeout=240)["status"]
    assert status["status_str"] == "error"
    error = next(m[1] for m in status["messages"] if m[0] == "execution_error")
    assert error["node_id"] == sampler and "T5TokenizerOptions" in error["exception_message"], error
    assert comfy_server.get("/system_stats")  # the server lives on
