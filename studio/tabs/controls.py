"""Controls every generating tab has, built one way."""

from __future__ import annotations

import functools
import inspect
import logging
import random
from typing import NamedTuple

import gradio as gr

from pipelines.core.checks import MAX_GUIDANCE, MAX_SEED, MAX_STEPS, MIN_GUIDANCE
from pipelines.sd15.modes import refusal
from studio.engine import STOPPED, queue_wait_seconds


class Generating(NamedTuple):
    """What the studio wires across a generating tab: its generate event, its clip, its send-to-segmentation button."""

    generate: gr.Dependency
    video: gr.Video
    send: gr.Button


def sampler(tab: str, steps: int, guidance: float) -> tuple[gr.Slider, gr.Slider, gr.Number, gr.Checkbox]:
    """Steps, guidance, seed and "randomize" (a UI step before the call: the endpoint uses the seed it gets)."""
    with gr.Row():
        steps_ = gr.Slider(label="Steps", minimum=1, maximum=MAX_STEPS, step=1, precision=0, value=steps,
                           elem_id=f"{tab}-steps")
        guidance_ = gr.Slider(label="Guidance", minimum=MIN_GUIDANCE, maximum=MAX_GUIDANCE, step=0.5, value=guidance,
                              elem_id=f"{tab}-guidance")
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
        randomize = gr.Checkbox(label="Randomize seed", value=True)
    return steps_, guidance_, seed, randomize


def mode_choice(modes: dict, elem_id: str, refused: dict[str, str] | None = None) -> gr.Radio:
    """Quality / Fast / Fast preview: what runs is said under the choice (pipelines/sd15/modes.py). A fast path the tab
    refuses (`refused`: name -> why) gets its reason, where Gradio would only list the choices."""
    info = " · ".join(f"{m.label}: {m.hint or m.what}" for m in modes.values())
    radio = gr.Radio(label="Mode", choices=[(m.label, m.name) for m in modes.values()], value="quality",
                     info=info, elem_id=elem_id)
    if refused:
        preprocess = radio.preprocess

        def explained(payload):
            if (why := refusal(payload, refused)) is not None:
                raise gr.Error(why, print_exception=False)
            return preprocess(payload)

        radio.preprocess = explained
    return radio


def follow_mode(mode: gr.Radio, modes: dict, steps: gr.Slider, guidance: gr.Slider) -> None:
    """Choosing a mode sets Steps and Guidance to what it was made for (a fast mode refuses others)."""
    def settings(name: str):
        chosen = modes.get(name)
        if chosen is None:
            return gr.skip(), gr.skip()
        return chosen.default_steps, chosen.default_guidance

    mode.change(settings, mode, [steps, guidance], queue=False, api_name=False, show_progress="hidden")


def live_preview() -> gr.Checkbox:
    """On in the page, off for API calls unless asked: its value is False (what gradio_client sends when the
    parameter is left out), and the page switches it on when it loads."""
    box = gr.Checkbox(label="Live preview", value=False,
                      info="Shows the clip taking shape while it denoises (tiny decoder; ≤ 5 % slower)")
    gr.on(None, lambda: True, None, box, queue=False, api_name=False, show_progress="hidden")   # on page load
    return box


def run_buttons(label: str, elem_id: str) -> tuple[gr.Button, gr.Button]:
    """The run button and Stop beside it; Stop shows only while a run of this tab is queued or running."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=elem_id, scale=3)
        stop = gr.Button("Stop", variant="stop", scale=1, visible=False, elem_id=f"{elem_id}-stop")
    return run, stop


def estimate_display(elem_id: str, fn, inputs: list) -> gr.Markdown:
    """Under the Generate button: how long a run with these settings will take here ("≈ 40 s on this GPU"),
    from this machine's earlier runs; it follows every change of the settings it depends on."""
    shown = gr.Markdown(elem_id=elem_id, elem_classes="studio-estimate")
    # triggers=None: on page load and on every change of the inputs (not an API endpoint)
    gr.on(None, fn, inputs, shown, queue=False, api_name=False, show_progress="hidden")
    return shown


def another_seed_button(elem_id: str) -> gr.Button:
    """Shown under a clip when the output check blurred frames of it: the same request with a new seed."""
    return gr.Button("Frames were blurred: try another seed", visible=False, size="sm", elem_id=elem_id)


def flagged_frames_shown(info: dict | None):
    """Show the another-seed button when the last clip had frames the output check blurred."""
    flagged = ((info or {}).get("safety") or {}).get("output_check", {}).get("flagged_frames")
    return gr.update(visible=bool(flagged))


def new_seed() -> int:
    return random.randint(0, MAX_SEED)


def randomize_seed(seed: int, randomize: bool) -> int:
    """The UI's step before a generating call: a fresh seed when asked for, else the seed as it is."""
    return new_seed() if randomize else seed


def send_to_segmentation(video: gr.Video) -> gr.Button:
    """Under a generated clip: hand it to the Referring segmentation tab (shown only while there is a clip)."""
    button = gr.Button("Segment this clip", size="sm", elem_classes="studio-send", visible=False)
    video.change(lambda clip: gr.update(visible=bool(clip)), video, button, queue=False, api_name=False,
                 show_progress="hidden")
    return button


def safety_toggle(enforced: bool) -> gr.Checkbox:
    """The guard switch every generating tab has; shown locked, with the reason, when the server enforces it."""
    return gr.Checkbox(
        label="Safety guard", value=True, interactive=not enforced,
        info="Enforced on this server (STUDIO_SAFETY=enforced): it cannot be switched off." if enforced else
        "SAFREE steers the prompt away from unsafe concepts; every frame is checked either way.",
    )


class ResultArea(NamedTuple):
    """A tab's result area: the outputs of its run, in the endpoint's order, and where its summary line is. It
    always shows the latest state: running (or queued), done, stopped or refused; never the previous run's result
    beside a new state."""

    outputs: list
    summary_at: int
    stop: gr.Button

    @property
    def summary(self) -> gr.Markdown:
        return self.outputs[self.summary_at]

    def state(self, line: str) -> tuple:
        """Every output cleared (a plot hidden: an empty chart only looks broken), the summary saying `line`."""
        return tuple(line if i == self.summary_at else
                     gr.update(value=None, visible=False) if isinstance(output, gr.LinePlot) else None
                     for i, output in enumerate(self.outputs))


def runs_line(ahead: int, estimate: str | None) -> str:
    """The summary line when a run is asked for: running now, or queued behind the runs before it (every GPU call
    of the studio, any tab and any visitor, runs one at a time). Gradio's own ETA is hidden (assets/studio.css):
    the studio's estimate, from this machine's runs, is the one shown."""
    estimate = (estimate or "").strip()
    if ahead:
        return (f"**Queued** behind {ahead} run{'s' * (ahead != 1)} (GPU calls run one at a time, from every tab "
                f"and visitor): this one starts when {'it ends' if ahead == 1 else 'they end'}.  \n{estimate}")
    return f"**Running**  \n{estimate}"


def refused_line(message: str) -> str:
    return f"**Not done**: {message}"


STOPPED_LINE = f"**Stopped** · {STOPPED} Press the button again to start a new run."


def page_run(engine, fn, area: ResultArea, shape=None):
    """The page's side of an endpoint (the API keeps `fn` as it is: its errors reach clients as errors). Its
    updates pass through; once it waited in the queue, the summary says it is running now. An error becomes the
    refused state (the message stays in the summary area until the next run, and shows as a toast too), a stop
    the stopped state: never Gradio's red "Error" over the outputs. `shape(update)`: the page's form of the final
    outputs (a marker in a token, a plot shown only when it has points)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        request = signature.bind_partial(*args, **kwargs).arguments.get("request")
        waited = queue_wait_seconds()
        if waited is not None and waited >= 1 and not engine.stop_asked(request):
            yield tuple(f"**Running** · it waited {waited:.0f} s in the queue" if i == area.summary_at
                        else gr.skip() for i in range(len(area.outputs)))
        stopped = False
        try:
            updates = fn(*args, **kwargs)
            try:
                for update in (updates if inspect.isgenerator(updates) else [updates]):
                    if engine.stop_asked(request):      # Stop came between two updates: its state stays
                        stopped = True
                        break
                    yield shape(update) if shape is not None else update
            finally:
                if inspect.isgenerator(updates):
                    updates.close()                     # a call stopped early unwinds now (its GPU call too)
        except gr.Error as error:
            if error.message != STOPPED:
                gr.Warning(error.message)
                yield area.state(refused_line(error.message))
                return
            stopped = True
        except Exception as error:                      # a bug: its traceback in the log, its words on the page
            logging.getLogger(__name__).exception("%s failed", fn.__name__)
            message = f"Something went wrong on the server ({type(error).__name__}: {error})."
            gr.Warning(message)
            yield area.state(refused_line(message))
            return
        if stopped or engine.stop_asked(request):
            yield area.state(STOPPED_LINE)
    return run


def tool(fn, name: str):
    """`fn` under the name MCP clients see: Gradio names a tool after its function, not its api_name. The same
    signature, docstring and type hints (functools.wraps), a generator where `fn` is one (streaming stays)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def named(*args, **kwargs):
            yield from fn(*args, **kwargs)
    else:
        @functools.wraps(fn)
        def named(*args, **kwargs):
            return fn(*args, **kwargs)
    named.__name__ = named.__qualname__ = name
    return named


def api_endpoint(fn, inputs: list, outputs: list, api_name: str) -> gr.Dependency:
    """The endpoint API and MCP clients call: `fn` itself (its errors reach them as errors), on a trigger the page
    never fires, and named `api_name` for MCP too. Its inputs may be the page's components or API-only hidden ones
    (whole numbers typed as integers, a mode's own steps when none are given)."""
    return gr.Button(visible=False).click(tool(fn, api_name), inputs, outputs, api_name=api_name, concurrency_id="gpu")


def api_sampling() -> tuple[gr.Number, gr.Number]:
    """The API's steps and guidance: hidden inputs, empty by default, so that a call naming only a mode gets that
    mode's own steps and guidance (the page sends its sliders, which choosing a mode sets the same way). Steps are
    typed as an integer."""
    return (gr.Number(label="Steps", value=None, precision=0, minimum=1, maximum=MAX_STEPS, visible=False),
            gr.Number(label="Guidance", value=None, minimum=MIN_GUIDANCE, maximum=MAX_GUIDANCE, visible=False))


def wire_generate(engine, triggers: list, fn, inputs: list, area: ResultArea, seed, randomize, another,
                  info, progress_on, estimate: gr.Markdown, examples: gr.Examples | None = None,
                  after=None, shape=None) -> gr.Dependency:
    """Every generating tab's page events, one way: the seed chain (randomize, then generate: the endpoint uses the
    seed it gets), the another-seed retry shown when the output check blurred frames, and Stop for all of them.
    Each run first clears the result area and says it is running (or queued), and shows Stop; Stop leaves the
    stopped state. `examples` (filling the inputs only): a click on one runs as Generate does, the step bar, live
    preview, the studio's estimate and Stop included, with the example's own seed (a presenter's first click, and
    it must be stoppable). `after(event)`: chained after each run (the estimate line, refined by what the run
    measured). The API endpoint is wired apart (`api_endpoint`)."""
    stop, outputs, run = area.stop, area.outputs, page_run(engine, fn, area, shape)

    def starting(request: gr.Request, estimate_line, seed_value=None, randomize_it=False):
        engine.arm_stop(request)
        line = runs_line(engine.runs_ahead(), estimate_line)
        return (randomize_seed(seed_value, randomize_it), *area.state(line), gr.update(visible=True))

    def kept_seed(estimate_line, request: gr.Request):
        return starting(request, estimate_line)[1:]

    def first_run(estimate_line, seed_value, randomize_it, request: gr.Request):
        return starting(request, estimate_line, seed_value, randomize_it)

    def another_run(estimate_line, request: gr.Request):
        return (new_seed(), *starting(request, estimate_line)[1:])

    def queued(event) -> gr.Dependency:
        return event.then(run, inputs, outputs, api_name=False, concurrency_id="gpu", show_progress_on=progress_on)

    first = gr.on(triggers, first_run, [estimate, seed, randomize], [seed, *outputs, stop], queue=False,
                  api_name=False)
    retry = another.click(another_run, estimate, [seed, *outputs, stop], queue=False, api_name=False)
    runs = [queued(first), queued(retry)]
    if examples is not None:
        runs.append(queued(examples.load_input_event.then(kept_seed, estimate, [*outputs, stop], queue=False,
                                                          api_name=False)))
    for event in runs:
        event.then(flagged_frames_shown, info, another, queue=False, api_name=False).then(
            lambda: gr.update(visible=False), None, stop, queue=False, api_name=False)
        if after is not None:
            after(event)
    wire_stop(engine, area, runs)
    return runs[0]


def wire_stop(engine, area: ResultArea, runs: list) -> None:
    """Stop for a tab's runs: the stopped state, Stop hidden again. Both the flag (engine.stop: the call ends at its
    next step and unwinds its locks) and Gradio's cancel (the page's event ends at once, so the next click is not
    dropped as "still pending"; on ZeroGPU the flag cannot reach the GPU worker, the cancel can). A cancelled event
    may end in Gradio's red "Error" over the outputs: assets/studio.css hides that pill on the result components
    (page_run turns every real error into the refused state, so only a cancel can raise it)."""
    def stopped(request: gr.Request):
        engine.stop(request)
        return (*area.state(STOPPED_LINE), gr.update(visible=False))

    area.stop.click(stopped, None, [*area.outputs, area.stop], cancels=runs, api_name=False)   # queued: its toast


def _number(value: float) -> str:
    """A bound as a person writes it: 4294967295, not 4.29497e+09; 0.5 as it is."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _expects(component) -> str:
    """What a component takes, in a person's words (for the message about a value it could not read)."""
    if isinstance(component, gr.Slider):
        whole = "a whole number" if component.precision == 0 else "a number"
        return f"{whole} from {_number(component.minimum)} to {_number(component.maximum)}"
    if isinstance(component, gr.Number):
        kind = "a whole number" if component.precision == 0 else "a number"
        if component.minimum is not None and component.maximum is not None:
            return f"{kind} from {_number(component.minimum)} to {_number(component.maximum)}"
        return kind
    if isinstance(component, gr.Checkbox):
        return "true or false"
    if isinstance(component, gr.CheckboxGroup):
        return "a list of: " + ", ".join(str(c[1] if isinstance(c, tuple) else c) for c in component.choices)
    if isinstance(component, (gr.Dropdown, gr.Radio)):
        return "one of: " + ", ".join(str(c[1] if isinstance(c, tuple) else c) for c in component.choices)
    if isinstance(component, (gr.File, gr.Video, gr.Image)):
        return "an uploaded file (from Python: gradio_client.handle_file(path))"
    return "text" if isinstance(component, gr.Textbox) else f"a {type(component).__name__} value"


def name_bad_values(demo: gr.Blocks) -> None:
    """Every input component refuses a value it cannot read with a message naming it and what it takes, where
    Gradio would answer "The upstream Gradio app has raised an exception" (a TypeError inside), or would quietly
    make something of it: a Textbox turns 12 or ["a"] into the text "12" or "['a']", a Checkbox reads "yes" as
    true, a whole-number Number rounds 1.5 to 2. Its own messages (a slider's range, a choice not in the list)
    pass through."""
    from pipelines.core.checks import excerpt

    for block in demo.blocks.values():
        if not isinstance(block, gr.components.Component) or getattr(block, "_studio_checked", False):
            continue
        original, name = block.preprocess, block.label or block.elem_id or type(block).__name__

        def preprocess(payload, _original=original, _name=name, _block=block):
            try:
                if not _readable(_block, payload):
                    raise TypeError
                return _original(payload)
            except gr.Error:
                raise
            except Exception:
                raise gr.Error(f"{_name} takes {_expects(_block)}, not {excerpt(repr(payload))}.",
                               print_exception=False) from None

        block.preprocess = preprocess
        if isinstance(block, gr.File) and block.type == "filepath":
            block._process_single_file = _file_path_only.__get__(block)
        if getattr(block, "data_model", None) is not None:
            block.data_model = _named_data_model(block.data_model, name, _expects(block))
        block._studio_checked = True


def _file_path_only(self, f):
    """gr.File's own `_process_single_file` for type="filepath", less the empty NamedTemporaryFile(delete=False)
    it opens in Gradio's cache for every file and never uses (its name is overwritten at once): one 0-byte file
    and one open descriptor left behind per uploaded photo (bench/soak.py found 200 calls leaving 200). The path
    it returns is the uploaded file's, as before."""
    from gradio.utils import NamedString
    from gradio_client import utils as client_utils

    if self.file_types and not client_utils.is_valid_file(f.path, self.file_types):
        raise gr.Error(f"Invalid file type. Please upload a file that is one of these formats: {self.file_types}")
    return NamedString(f.path)


def _readable(component, payload) -> bool:
    """Whether a payload is of the type the component takes (None: the component's own empty value)."""
    if payload is None:
        return True
    if isinstance(component, gr.Textbox):
        return isinstance(payload, str)
    if isinstance(component, gr.Checkbox):
        return isinstance(payload, bool)
    if isinstance(component, (gr.Number, gr.Slider)) and component.precision == 0:
        return isinstance(payload, int) and not isinstance(payload, bool) or (
            isinstance(payload, float) and payload.is_integer())
    return True


def _named_data_model(model, name: str, expects: str):
    """A file component's payload is validated against its pydantic data model *before* its preprocess runs
    (gradio.blocks.preprocess_data), so a plain string where a file belongs never reaches the wrapper above.
    A subclass with the same fields and schema turns that validation error into the same named message."""
    import pydantic

    from pipelines.core.checks import excerpt

    def model_validate(cls, obj, *args, **kwargs):
        try:
            return model.model_validate(obj, *args, **kwargs)
        except pydantic.ValidationError:
            raise gr.Error(f"{name} takes {expects}, not {excerpt(repr(obj))}.", print_exception=False) from None

    return type(model.__name__, (model,), {"__module__": model.__module__,
                                           "model_validate": classmethod(model_validate)})
