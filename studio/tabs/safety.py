"""Safe generation tab (SAFREE): layout and wiring only."""

from __future__ import annotations

from functools import partial

import gradio as gr

from pipelines.safety.guard import (
    BETA_TOKENS,
    CONCEPTS,
    DEFAULT_CATEGORIES,
    PAPER_ORDER,
    RELEASED_ORDER,
    SafetyOptions,
)
from pipelines.sd15.modes import REFUSED_TIMELAPSE, TIMELAPSE_MODES
from pipelines.timelapse.pipeline import TimelapseRequest
from studio.engine import Engine
from studio.tabs import controls
from studio.tabs.safety_api import DEFAULT_FRAMES, SafetyAPI, estimate_line, shown_tokens

# Harmless examples only: the attack prompt sets are for evaluation, never for the UI.
EXAMPLES = [
    ["a starry night over a village in the style of Van Gogh", ["artist style"], ""],
    ["Snoopy flying on his red doghouse over a green field", [], "Snoopy"],
    ["a quiet harbour at dawn, fishing boats, soft light", list(DEFAULT_CATEGORIES), ""],
]

# The colours are gr.HighlightedText's own for scores (red for positive, purple for negative; deeper: larger).
TOKEN_LEGEND = ('<span class="token-key toward">red</span> pulls the prompt towards the concepts chosen (deeper: more) · '
                '<span class="token-key away">purple</span> pulls away from them · ▲ projected by the guard · '
                'scores scaled so the largest is ±1')


def build(engine: Engine) -> controls.Generating:
    api = SafetyAPI(engine)
    estimate_fn = partial(estimate_line, engine)
    enforced = engine.safety_enforced
    with gr.Tab("Safe generation", id="safety"):
        gr.Markdown(
            "Write a prompt and choose what to keep out of it: the guard finds the words that pull the prompt "
            "towards those concepts and projects them away, for as many steps as the prompt needs "
            "([SAFREE](https://arxiv.org/abs/2410.12761), training-free; the weights are untouched). Every frame "
            "is then checked by an NSFW classifier." + ("" if enforced else
                                                        " The unguarded clip for the same seed is shown beside it.")
        )
        with gr.Row():
            with gr.Column(scale=5):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="safety-prompt",
                                    placeholder="a starry night over a village in the style of Van Gogh")
                concepts = gr.CheckboxGroup(label="Concepts to suppress", choices=list(CONCEPTS),
                                            value=list(DEFAULT_CATEGORIES), elem_id="safety-concepts",
                                            info="Each category is a list of phrases (17 for nudity, 13 for violence)"
                                                 + ("; this server enforces the guard: nudity and violence stay in"
                                                    if enforced else ""))
                custom = gr.Textbox(label="Your own concepts (comma-separated)", value="",
                                    placeholder="Snoopy, Mickey Mouse",
                                    elem_id="safety-custom")
                with gr.Accordion("Guard options", open=False):
                    alpha = gr.Slider(label="α: selection margin", minimum=0.0, step=0.005,
                                      maximum=SafetyOptions.alpha if enforced else 0.5,   # enforced: stricter only
                                      value=SafetyOptions.alpha,
                                      info="a token is projected if masking it moves the prompt this much further "
                                           "than average from the concepts")
                    projection = gr.Radio(label="Projection order", value=SafetyOptions.projection,
                                          choices=[("(I − P_C) P_I e: the released code's (default)", RELEASED_ORDER),
                                                   ("P_I (I − P_C) e: as printed in the paper", PAPER_ORDER)],
                                          info="the two do not commute; the published numbers come from the code's")
                    with gr.Row():
                        step_filter = gr.Radio(label="Step filter", value=SafetyOptions.filter,
                                               choices=[("round(γ σ(2κ(10β − τ))): the released code's (default)",
                                                         "released"), ("γ σ(1 − cos): the paper's", "paper")],
                                               info="how many steps denoise with the projected prompt")
                        beta_tokens = gr.Radio(label="β over", value=SafetyOptions.beta_tokens,
                                               choices=[("BOS, prompt, EOS: the released code's (default)",
                                                         BETA_TOKENS[0]), ("the prompt's tokens only", BETA_TOKENS[1])],
                                               info="the tokens whose cosine to their projection gives β")
                    with gr.Row():
                        reattention = gr.Checkbox(label="Latent re-attention", value=SafetyOptions.reattention,
                                                  info="Fourier filter on the UNet's skip features (slower)")
                        as_negative = gr.Checkbox(label="Concepts as negative prompt",
                                                  value=SafetyOptions.concepts_as_negative,
                                                  info="as the released code does")
                    compare = gr.Checkbox(label="Show the unguarded clip beside it", value=not enforced,
                                          interactive=not enforced, visible=not enforced)
                with gr.Accordion("Advanced", open=False):
                    num_frames = gr.Slider(label="Frames", minimum=8, maximum=16, step=1, precision=0,
                                           value=DEFAULT_FRAMES)
                    steps, guidance, seed, randomize = controls.sampler("safety", TimelapseRequest.steps,
                                                                        TimelapseRequest.guidance)
                    preview = controls.live_preview()
                mode = controls.mode_choice(TIMELAPSE_MODES, "safety-mode", REFUSED_TIMELAPSE)
                controls.follow_mode(mode, TIMELAPSE_MODES, steps, guidance)
                run, stop = controls.run_buttons("Generate safely", "safety-run")
                estimate_inputs = [compare, num_frames, steps, guidance, mode]
                estimate = controls.estimate_display("safety-estimate", estimate_fn, estimate_inputs)
            with gr.Column(scale=6):
                tokens = gr.HighlightedText(label="What the guard saw: toxicity per token (▲ projected)",
                                            show_legend=False, combine_adjacent=False, elem_id="safety-tokens")
                gr.Markdown(TOKEN_LEGEND, elem_id="safety-legend", elem_classes="studio-legend")
                with gr.Row():
                    guarded = gr.Video(label="Guarded", autoplay=True, loop=True, height=300, interactive=False,
                                       elem_id="safety-guarded")
                    unguarded = gr.Video(label="Unguarded, same seed", autoplay=True, loop=True, height=300,
                                         interactive=False,
                                         visible=not enforced, elem_id="safety-unguarded")
                with gr.Row():
                    another = controls.another_seed_button("safety-another-seed")
                    send = controls.send_to_segmentation(guarded)
                summary = gr.Markdown(elem_id="safety-summary", elem_classes="studio-summary")
                with gr.Accordion("Details (JSON)", open=False):
                    info = gr.JSON(show_label=False)

        inputs = [prompt, concepts, custom, alpha, projection, reattention, as_negative, compare, num_frames, steps,
                  guidance, seed, mode, beta_tokens, step_filter, preview]
        outputs = [guarded, unguarded, tokens, summary, info]
        gr.Examples(examples=EXAMPLES, inputs=[prompt, concepts, custom],
                    example_labels=["Remove an artist's style", "Remove a character", "Nothing to remove"])
        # The API's own endpoint: clean tokens ({text, score, projected}, no ▲) and the mode's own steps and
        # guidance when none are given.
        controls.api_endpoint(api.stream, [*inputs[:9], *controls.api_sampling(), *inputs[11:]],
                              [guarded, unguarded, gr.JSON(visible=False, label="Tokens"), summary, info],
                              "safe_generate")

    area = controls.ResultArea(outputs, summary_at=3, stop=stop)
    generate = controls.wire_generate(
        engine, [prompt.submit, run.click], api.stream, inputs, area, seed, randomize, another, info,
        progress_on=[guarded, unguarded], estimate=estimate, shape=shown_tokens,
        after=lambda event: event.then(estimate_fn, estimate_inputs, estimate, queue=False, api_name=False,
                                       show_progress="hidden"))               # the run just refined the rates
    return controls.Generating(generate, guarded, send)
