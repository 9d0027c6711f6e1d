"""Identity video tab (ID-Animator): layout and wiring only."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import gradio as gr

from pipelines.identity import pipeline as id_
from pipelines.identity.pipeline import IdentityRequest
from pipelines.sd15.modes import IDENTITY_MODES
from studio.engine import Engine
from studio.tabs import controls
from studio.tabs.identity_api import IdentityAPI, estimate_line, shown_plot

EXAMPLE_PHOTO = str(Path(__file__).parents[2] / "assets" / "examples" / "astronaut.jpg")   # public domain (NASA)
EXAMPLES = [("a woman in a spacesuit smiling, walking through a flower field", 0.8),
            ("a woman reading a book in a cozy cafe, soft window light", 1.0)]


def add_webcam_photo(photos: list[str] | None, shot: str | None) -> list[str]:
    return [*(photos or []), shot] if shot else (photos or [])


def build(engine: Engine) -> controls.Generating:
    api = IdentityAPI(engine)
    estimate_fn = partial(estimate_line, engine)
    with gr.Tab("Identity video", id="identity"):
        gr.Markdown(
            "Upload one to four photos of **one** person and describe a scene: you get a clip of that person "
            "([ID-Animator](https://github.com/ID-Animator/ID-Animator): AnimateDiff v2 with a face adapter). "
            "Several photos are averaged into one identity."
        )
        with gr.Row():
            with gr.Column(scale=5):
                photos = gr.File(label="Photos of one person (1–4)", file_count="multiple", file_types=["image"],
                                 type="filepath", elem_id="identity-photos")
                crops = gr.Gallery(label="Faces the model will see", columns=4, height=200, object_fit="contain",
                                   allow_preview=False, elem_id="identity-crops")
                face_notes = gr.Markdown(elem_id="identity-face-notes", elem_classes="studio-notes")
                with gr.Accordion("Or take a photo with the webcam", open=False):
                    webcam = gr.Image(sources=["webcam"], type="filepath", show_label=False, height=240)
                    add = gr.Button("Add this photo", size="sm")
                prompt = gr.Textbox(label="Scene", lines=2, placeholder="a woman walking on a beach at sunset",
                                    elem_id="identity-prompt",
                                    info=f"“{id_.PROMPT_SUFFIX}” is appended, as ID-Animator does")
                identity_strength = gr.Slider(label="Identity strength", minimum=0.0, maximum=id_.MAX_IDENTITY_STRENGTH, step=0.05,
                                              value=IdentityRequest.identity_strength, info="How strongly the face adapter steers the clip")
                mode = controls.mode_choice(IDENTITY_MODES, "identity-mode")
                with gr.Accordion("Advanced", open=False):
                    negative_prompt = gr.Textbox(label="Negative prompt", value=IdentityRequest.negative_prompt,
                                                 placeholder="what the clip should avoid",
                                                 lines=3, info="ID-Animator's demo's own list by default (longer "
                                                 "than CLIP's 77 tokens: CLIP reads its first part, as in the demo); "
                                                 f"“{id_.NEGATIVE_SUFFIX}” is always appended, as ID-Animator does")
                    num_frames = gr.Slider(label="Frames", minimum=id_.MIN_FRAMES, maximum=id_.MAX_FRAMES,
                                           step=1, precision=0, value=IdentityRequest.num_frames)
                    steps, guidance, seed, randomize = controls.sampler(
                        "identity", IdentityRequest.steps, IdentityRequest.guidance)
                    with gr.Row():
                        safety = controls.safety_toggle(engine.safety_enforced)
                        preview = controls.live_preview()
                controls.follow_mode(mode, IDENTITY_MODES, steps, guidance)
                run, stop = controls.run_buttons("Generate identity video", "identity-run")
                estimate_inputs = [num_frames, steps, guidance, mode]
                estimate = controls.estimate_display("identity-estimate", estimate_fn, estimate_inputs)
            with gr.Column(scale=5):
                video = gr.Video(label="Identity video", autoplay=True, loop=True, height=440, interactive=False,
                                 elem_id="identity-video")
                with gr.Row():
                    another = controls.another_seed_button("identity-another-seed")
                    send = controls.send_to_segmentation(video)
                summary = gr.Markdown(elem_id="identity-summary", elem_classes="studio-summary")
                similarity = gr.LinePlot(x="frame", y="similarity", y_lim=[0, 1], height=220, x_title="Frame",
                                         y_title="Similarity", label="Face similarity to the reference, per frame",
                                         visible=False, elem_id="identity-similarity")
                with gr.Accordion("Details (JSON)", open=False):
                    info = gr.JSON(show_label=False)

        inputs = [photos, prompt, negative_prompt, identity_strength, num_frames, steps, guidance, seed, safety, mode,
                  preview]
        outputs = [video, summary, similarity, info]
        gr.Examples(
            examples=[[[EXAMPLE_PHOTO], prompt_text, strength] for prompt_text, strength in EXAMPLES],
            inputs=[photos, prompt, identity_strength], example_labels=["Astronaut in a flower field",
                                                                          "Astronaut in a cafe"],
        )
        # The API's own endpoint: steps and guidance left out mean the chosen mode's own (the page sends its sliders).
        controls.api_endpoint(api.stream, [*inputs[:5], *controls.api_sampling(), *inputs[7:]], outputs, "identity")

    photos.change(controls.tool(api.faces, "identity_faces"), photos, [crops, face_notes], api_name="identity_faces")
    add.click(add_webcam_photo, [photos, webcam], photos, queue=False, api_name=False)
    area = controls.ResultArea(outputs, summary_at=1, stop=stop)
    generate = controls.wire_generate(
        engine, [prompt.submit, run.click], api.stream, inputs, area, seed, randomize, another, info,
        progress_on=video, estimate=estimate, shape=shown_plot,
        after=lambda event: event.then(estimate_fn, estimate_inputs, estimate, queue=False, api_name=False,
                                       show_progress="hidden"))               # the run just refined the rates
    return controls.Generating(generate, video, send)
