"""Referring segmentation tab: layout and wiring only."""

from __future__ import annotations

import json
from functools import lru_cache

import gradio as gr

from pipelines.core.video import read_video
from pipelines.segmentation import mask_export
from pipelines.segmentation.models import DEFAULT_GROUNDER, DEFAULT_TRACKER, GROUNDERS, TRACKERS
from pipelines.segmentation.pipeline import MAX_FRAMES, MAX_SECONDS, SegmentationRequest
from studio.engine import VDIT_OFF, Engine
from studio.tabs import controls
from studio.tabs.segmentation_api import SegmentationAPI, clicks_markdown
from studio.tabs.segmentation_examples import EXAMPLES

# What the key-frame image shows, per backend: VD-IT has no candidates and takes no clicks.
KEY_LABELS = {"grounding": "Key frame: candidates (grey) and the chosen object; click to refine",
              "vdit": "VD-IT's best frame and its mask (from the text alone: no candidates, no clicks)"}


@lru_cache(maxsize=4)
def _overlay_frames(path: str):
    return read_video(path)[0]


def show_frame(overlay: str | None, frame: int):
    """The overlay clip's frame `frame`: the surface refinement clicks are made on."""
    if not overlay:
        return None
    frames = _overlay_frames(overlay)
    shown = frames[min(max(int(frame), 0), len(frames) - 1)]
    return mask_export.enlarge(shown, mask_export.display_scale(shown.shape[1], shown.shape[0]))


def add_click(clicks: str, frame: int, polarity: str, object_id: int, info: dict | None, image,
              event: gr.SelectData):
    """A click on the shown frame, in the video's pixels (the frame may be shown enlarged), marked where it was made
    on the shown image."""
    points = json.loads(clicks or "[]")
    factor = mask_export.display_scale(*info["size"]) if info else 1
    x, y = (v / factor for v in event.index)
    points.append({"frame": int(frame), "x": float(x), "y": float(y), "positive": polarity == "include",
                   "object_id": int(object_id or 1)})
    marked = gr.update() if image is None else mask_export.mark_click(image, *event.index, polarity == "include")
    return json.dumps(points), clicks_markdown(points), marked


def shown_areas(update: tuple) -> tuple:
    """The page's form of a result: the area plot shown once it has a table (the API gets the bare table), and its
    legend."""
    *before, areas, explanation, info = update
    if not hasattr(areas, "assign"):
        return (*update, gr.skip())
    # Gradio's own legend is cut off below a short plot (its title shows, its entries do not): the studio writes
    # its own under the plot, a swatch per object in the overlay's colour.
    ids = [int(i) for i in areas["object"].unique()]
    named = areas.assign(object=[f"object {i}" for i in areas["object"]])
    colours = {f"object {i}": "#%02x%02x%02x" % mask_export.colour(i) for i in ids}
    shown = gr.update(value=named, visible=True, color="object", color_map=colours, color_title="")
    key = " · ".join(f'<span class="area-key" style="background: {colour}"></span> {name}'
                     for name, colour in colours.items())
    return (*before, shown, explanation, info, key)


def after_segmenting(info: dict | None):
    """Point the refinement controls at the new result: the frame slider's range and position, the key frame."""
    if not info:
        return gr.update(), gr.update()
    return gr.update(maximum=info["num_frames"] - 1, value=info["key_frame"]), info["key_frame"]


def build(engine: Engine) -> gr.Video:
    """Lay out the tab; return its video input (the generating tabs send clips to it)."""
    api = SegmentationAPI(engine)
    with gr.Tab("Referring segmentation", id="segmentation") as tab:
        gr.Markdown(
            "Upload a video and say what to follow: “the dog on the left”, “every dog except the left one”, “the "
            "cup next to the laptop”. The phrase is grounded on a few frames, relations are resolved on the boxes "
            "found (words they cannot answer, like “closest to the camera”, go whole to Florence-2, and the "
            "explanation says so), and SAM 2 tracks the chosen object forward and backward from the frame the "
            f"sampled frames agree on. Up to {MAX_FRAMES} frames, {MAX_SECONDS:.0f} s, 1080p."
        )
        with gr.Row():
            with gr.Column(scale=5):
                video = gr.Video(label="Video", sources=["upload"], height=300, elem_id="segmentation-input")
                expression = gr.Textbox(label="What to segment", value="", placeholder="the dog on the left",
                                        elem_id="segmentation-expression")
                # VD-IT is offered only where its models are (or can be) loaded: on ZeroGPU every choice must be
                # preloaded, and its ~10 GB are not unless STUDIO_VDIT=1. Its absence is said, not hidden silently.
                backends = [("Grounding + SAM 2", "grounding")] + ([("VD-IT", "vdit")] if engine.settings.vdit else [])
                backend = gr.Radio(label="Backend", choices=backends,
                                   value=SegmentationRequest.backend, elem_id="segmentation-backend",
                                   info="VD-IT: the paper's own model, read off a video diffusion UNet (one object, "
                                        "no clicks). Its frozen backbone (ali-vilab/text-to-video-ms-1.7b) is "
                                        "CC-BY-NC-4.0: non-commercial use only." if engine.settings.vdit else
                                        f"{VDIT_OFF} It is the paper's own model (one object, no clicks).")
                vdit_pass = gr.Radio(label="VD-IT reads the video", value=SegmentationRequest.vdit_pass,
                                     choices=[("in 36-frame chunks (its Ref-DAVIS protocol)", "chunks"),
                                              ("whole, in one pass (its Ref-YouTube-VOS protocol; more memory)",
                                               "whole")],
                                     visible=False, elem_id="segmentation-vdit-pass")
                with gr.Row():
                    tracker = gr.Dropdown(label="Tracker", choices=list(TRACKERS), value=DEFAULT_TRACKER)
                    grounder = gr.Dropdown(label="Grounder", choices=list(GROUNDERS), value=DEFAULT_GROUNDER)
                with gr.Accordion("Advanced", open=False):
                    ground_frames = gr.Slider(label="Frames searched for the object", minimum=1, maximum=32, step=1,
                                              precision=0, value=SegmentationRequest.ground_frames)
                    reground_every = gr.Slider(label="Look for objects that enter later, every N frames (0: off)",
                                               minimum=0, maximum=MAX_FRAMES, step=1, precision=0,
                                               value=SegmentationRequest.reground_every)
                    box_threshold = gr.Slider(label="Box threshold", minimum=0.05, maximum=0.9, step=0.05,
                                              value=SegmentationRequest.box_threshold)
                run, stop = controls.run_buttons("Segment", "segmentation-run")
                with gr.Accordion("Refine with clicks", open=False, elem_id="segmentation-refine") as refine_box:
                    gr.Markdown("Click the frame on the right to add a point, then re-propagate. Clicks stay: every "
                                "later pass keeps them.")
                    with gr.Row():
                        polarity = gr.Radio(label="Click adds", choices=["include", "exclude"], value="include")
                        object_id = gr.Number(label="Object id", value=1, precision=0, minimum=1)
                    shown = gr.Slider(label="Frame shown", minimum=0, maximum=MAX_FRAMES - 1, step=1, precision=0,
                                      value=0)
                    clicks_text = gr.Markdown(clicks_markdown([]))
                    with gr.Row():
                        refine = gr.Button("Re-propagate with the clicks", variant="primary", size="sm")
                        clear = gr.Button("Clear clicks", size="sm")
            with gr.Column(scale=6):
                overlay = gr.Video(label="Masks", autoplay=True, loop=True, height=320, interactive=False,
                                   elem_id="segmentation-video")
                explanation = gr.Markdown(elem_id="segmentation-explanation", elem_classes="studio-summary")
                key_image = gr.Image(label=KEY_LABELS["grounding"],
                                     interactive=False, height=260, elem_id="segmentation-keyframe")
                with gr.Row():
                    masks_zip = gr.File(label="Masks: PNG per frame (zip)")
                    masks_rle = gr.File(label="Masks: COCO RLE (JSON)")
                areas = gr.LinePlot(x="frame", y="area", color="object", height=260, label="Mask area per frame",
                                    x_title="Frame", y_title="Pixels", visible=False, elem_id="segmentation-areas")
                legend = gr.Markdown(elem_id="segmentation-legend", elem_classes="studio-legend")
                with gr.Accordion("Details (JSON)", open=False):
                    info = gr.JSON(show_label=False)
        # Bundled: two cats and a cup (scikit-image's CC0 photos), so "the cat on the left" means something. A click
        # runs it as Segment does (step bar, Stop).
        examples = gr.Examples(examples=EXAMPLES, inputs=[video, expression], cache_examples=False,
                               example_labels=[f"“{expression}”" for _, expression in EXAMPLES],
                               label="Example clip: two cats and a cup (click one to segment it)")
        clicks = gr.Textbox(value="[]", visible=False)
        key_frame = gr.Number(value=None, visible=False, precision=0)

    outputs = [overlay, key_image, masks_zip, masks_rle, areas, explanation, info]
    settings = [tracker, grounder, ground_frames, reground_every, box_threshold, backend, vdit_pass]
    page_outputs = [*outputs, legend]          # the page's: the plot's legend besides the API's outputs
    area = controls.ResultArea(page_outputs, summary_at=5, stop=stop)
    with tab:     # the API's own endpoints: the functions as they are, their errors as errors
        controls.api_endpoint(api.segment, [video, expression, *settings], outputs, "segment")
        controls.api_endpoint(api.refine, [video, expression, clicks, key_frame, *settings], outputs, "segment_refine")

    def starting(kept_clicks: str, request: gr.Request):
        """A new Segment starts from the text alone: the clicks of the last result are cleared, and said to be."""
        engine.arm_stop(request)
        dropped = len(json.loads(kept_clicks or "[]"))
        line = controls.runs_line(engine.runs_ahead(), None)
        if dropped:
            line += (f"  \n{dropped} refinement click{'s' * (dropped != 1)} cleared: Segment starts from the text "
                     "alone (“Re-propagate with the clicks” keeps them).")
        return ("[]", clicks_markdown([]), None, *area.state(line), gr.update(visible=True))

    def refining(request: gr.Request):
        engine.arm_stop(request)
        return (*area.state(controls.runs_line(engine.runs_ahead(), None)), gr.update(visible=True))

    def segmenting(event) -> gr.Dependency:
        return event.then(controls.page_run(engine, api.segment, area, shown_areas), [video, expression, *settings],
                          page_outputs,
                          api_name=False, concurrency_id="gpu", show_progress_on=overlay)

    started = [clicks, clicks_text, key_frame, *page_outputs, stop]
    first = segmenting(gr.on([run.click, expression.submit], starting, clicks, started, queue=False, api_name=False))
    example = segmenting(examples.load_input_event.then(starting, clicks, started, queue=False, api_name=False))
    again = refine.click(refining, None, [*page_outputs, stop], queue=False, api_name=False).then(
        controls.page_run(engine, api.refine, area, shown_areas), [video, expression, clicks, key_frame, *settings],
        page_outputs,
        api_name=False, concurrency_id="gpu", show_progress_on=overlay)
    for event in (first, example, again):
        event.then(after_segmenting, info, [shown, key_frame], queue=False, api_name=False).then(
            lambda: gr.update(visible=False), None, stop, queue=False, api_name=False)

    controls.wire_stop(engine, area, [first, example, again])
    # VD-IT uses neither the grounder nor the tracker, and takes no clicks: their controls step aside.
    backend.change(lambda chosen: [gr.update(visible=chosen == "grounding")] * 3
                   + [gr.update(visible=chosen == "vdit"), gr.update(label=KEY_LABELS[chosen])], backend,
                   [tracker, grounder, refine_box, vdit_pass, key_image], queue=False, api_name=False,
                   show_progress="hidden")
    shown.release(show_frame, [overlay, shown], key_image, queue=False, api_name=False)
    key_image.select(add_click, [clicks, shown, polarity, object_id, info, key_image], [clicks, clicks_text, key_image],
                     queue=False, api_name=False)
    clear.click(lambda overlay_clip, frame: ("[]", clicks_markdown([]), show_frame(overlay_clip, frame)),
                [overlay, shown], [clicks, clicks_text, key_image], queue=False, api_name=False)   # markers gone
    return video
