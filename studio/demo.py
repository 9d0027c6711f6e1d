"""build_demo(): the four tabs in their final order, a System panel, and the tiny-profile banner."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio.engine import Engine
from studio.settings import Settings
from studio.tabs import controls, identity, safety, segmentation, system, timelapse

CSS = (Path(__file__).parents[1] / "assets" / "studio.css").read_text()
TINY_BANNER = (
    "**Test profile (`STUDIO_PROFILE=tiny`)**: every model is a tiny network with random weights. "
    "Outputs are noise, and so are the numbers about them: scores, counts of objects found, the tokens the guard "
    "flags and the faces detected are random too. This profile checks the plumbing, not the methods."
)

ENFORCED_BANNER = ("**Safety guard enforced** (`STUDIO_SAFETY=enforced`): every prompt goes through SAFREE and every "
                   "frame through the output check; neither can be switched off.")


def build_demo(engine: Engine) -> gr.Blocks:
    with gr.Blocks(title="Video Studio", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Video Studio\nFour research video tools on one GPU and one model cache.",
                    elem_id="studio-header")
        if engine.settings.profile == "tiny":
            gr.Markdown(TINY_BANNER, elem_id="tiny-banner", elem_classes="studio-banner")
        if engine.safety_enforced:
            gr.Markdown(ENFORCED_BANNER, elem_id="safety-banner", elem_classes="studio-banner")
        with gr.Tabs() as tabs:      # opens on the first tab, Identity video
            generating = [identity.build(engine), timelapse.build(engine), safety.build(engine)]
            segmentation_input = segmentation.build(engine)
        report, report_outputs = system.build(engine)
        for tab in generating:
            tab.generate.then(report, None, report_outputs, queue=False, api_name=False)
            # "Segment this clip": the generated MP4 becomes the segmentation tab's input, and that tab opens.
            tab.send.click(lambda clip: (clip, gr.Tabs(selected="segmentation")), tab.video,
                           [segmentation_input, tabs], queue=False, api_name=False)
        demo.load(report, None, report_outputs, queue=False, api_name=False)
    controls.name_bad_values(demo)
    # One worker per event and one shared concurrency_id ("gpu") for every GPU event: calls run one at a time.
    # A full queue is refused at once; the page says "This application is currently busy. Please try again."
    # and gradio_client raises QueueError("Queue is full! Please try again.").
    return demo.queue(default_concurrency_limit=1, max_size=engine.settings.queue_size)


def launch_kwargs(settings: Settings) -> dict:
    """What Blocks.launch needs besides host and port (Gradio 6 takes theme and CSS here). Uploads over the
    cap are refused by Gradio's upload route before anything is written to disk or decoded.

    show_error: Gradio refuses some requests itself before any studio code runs (a file path on the server
    that was never uploaded, the wrong number of values) and would answer them with an empty error. Shown, a
    client reads "Cannot move /etc/passwd to the gradio cache dir because it was not uploaded by a user". The
    trade-off: an unexpected exception's one-line text is shown too instead of a bare "Error" (its traceback
    stays in the server log); those are bugs, and their text is more use to the person reporting them.

    mcp_server: Gradio's MCP server (`gradio[mcp]`) at /gradio_api/mcp/ (streamable HTTP; /gradio_api/mcp/sse for
    SSE), every named endpoint a tool described by its function's docstring (README "MCP"). STUDIO_MCP=0 turns it
    off; without the `mcp` package it is off, and the log says why, rather than the studio not starting."""
    import importlib.util
    import logging

    mcp = settings.mcp
    if mcp and importlib.util.find_spec("mcp") is None:
        logging.getLogger(__name__).warning('The MCP server is off: the `mcp` package is missing '
                                            '(pip install "gradio[mcp]", as requirements.txt does).')
        mcp = False
    return {"theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="amber"), "css": CSS,
            "max_file_size": f"{settings.max_upload_mb}mb", "show_error": True, "mcp_server": mcp}
