"""Time-lapse tab (MagicTime): layout and wiring only."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from pipelines.sd15.models import STYLES
from pipelines.sd15.modes import REFUSED_TIMELAPSE, TIMELAPSE_MODES
from pipelines.timelapse.pipeline import CONTEXT_FRAMES, MAX_FRAMES, MIN_FRAMES, TimelapseRequest
from studio.engine import Engine
from studio.tabs import controls
from studio.tabs.timelapse_api import TimelapseAPI

EXAMPLES = json.loads((Path(__file__).parents[2] / "assets" / "timelapse_examples.json").read_text())


def build(engine: Engine) -> controls.Generating:
    """Lay out the tab; return the generate event (the System panel refreshes after it)."""
    api = TimelapseAPI(engine)
    with gr.Tab("Time-lapse", id="timelapse"):
        gr.Markdown(
            "Describe something that changes over time and get a metamorphic time-lapse "
            "([MagicTime](https://github.com/PKU-YuanGroup/MagicTime): AnimateDiff v3 with MagicTime's adapters). "
            "Add keyframes to steer its stages or to go past 16 frames."
        )
        with gr.Row():
            with gr.Column(scale=5):
                prompt = gr.Textbox(
                    label="What changes over time", lines=3, max_lines=8, elem_id="timelapse-prompt",
                    placeholder="Time-lapse of a seed growing into a sunflower: the seed sprouts, leaves unfold, "
                                "the stem rises and the flower finally opens.",
                )
                keyframes = gr.Textbox(
                    label="Keyframes (optional)", value="", lines=3, max_lines=10,
                    placeholder="0: a closed rose bud\n24: a rose in full bloom",
                    info="One stage per line as `frame: description`. Frame 0 defaults to the prompt above.",
                )
                with gr.Row():
                    style = gr.Dropdown(label="Style", choices=list(STYLES), value=TimelapseRequest.style, scale=1)
                    num_frames = gr.Slider(
                        label="Frames", minimum=MIN_FRAMES, maximum=MAX_FRAMES, step=1, precision=0,
                        value=TimelapseRequest.num_frames, scale=2,
                        info=f"over {CONTEXT_FRAMES} needs keyframes",
                    )
                mode = controls.mode_choice(TIMELAPSE_MODES, "timelapse-mode", REFUSED_TIMELAPSE)
                with gr.Accordion("Advanced", open=False):
                    negative_prompt = gr.Textbox(label="Negative prompt", value=TimelapseRequest.negative_prompt)
                    steps, guidance, seed, randomize = controls.sampler(
                        "timelapse", TimelapseRequest.steps, TimelapseRequest.guidance)
                    with gr.Row():
                        safety = controls.safety_toggle(engine.safety_enforced)
                        preview = controls.live_preview()
                controls.follow_mode(mode, TIMELAPSE_MODES, steps, guidance)
                run, stop = controls.run_buttons("Generate time-lapse", "timelapse-run")
                estimate_inputs = [keyframes, style, num_frames, steps, guidance, mode]
                estimate = controls.estimate_display("timelapse-estimate", api.estimate, estimate_inputs)
            with gr.Column(scale=5):
                video = gr.Video(label="Time-lapse", autoplay=True, loop=True, height=440, interactive=False,
                                 elem_id="timelapse-video")
                with gr.Row():
                    another = controls.another_seed_button("timelapse-another-seed")
                    send = controls.send_to_segmentation(video)
                summary = gr.Markdown(elem_id="timelapse-summary", elem_classes="studio-summary")
                with gr.Accordion("Details (JSON)", open=False):
                    info = gr.JSON(show_label=False)

        inputs = [prompt, keyframes, negative_prompt, style, num_frames, steps, guidance, seed, safety, mode, preview]
        outputs = [video, summary, info]
        # Not cached: an example is a run like any other (step bar, preview, estimate, Stop), wired below.
        examples = gr.Examples(
            examples=[[e["prompt"], e["keyframes"], TimelapseRequest.negative_prompt, e["style"], e["num_frames"],
                       TimelapseRequest.steps, TimelapseRequest.guidance, e["seed"], True, "quality", True]
                      for e in EXAMPLES],
            inputs=inputs, cache_examples=False, example_labels=[e["label"] for e in EXAMPLES], examples_per_page=5,
        )
        # The API's own endpoint: steps and guidance left out mean the chosen mode's own (the page sends its sliders).
        controls.api_endpoint(api.stream, [*inputs[:5], *controls.api_sampling(), *inputs[7:]], outputs, "timelapse")

    area = controls.ResultArea(outputs, summary_at=1, stop=stop)
    generate = controls.wire_generate(
        engine, [prompt.submit, run.click], api.stream, inputs, area, seed, randomize, another, info,
        progress_on=video, estimate=estimate, examples=examples,
        after=lambda event: event.then(api.estimate, estimate_inputs, estimate, queue=False, api_name=False,
                                       show_progress="hidden"))               # the run just refined the rates
    return controls.Generating(generate, video, send)
