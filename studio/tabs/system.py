"""System panel: what the model cache holds and how it has behaved."""

from collections.abc import Callable

import gradio as gr

from studio.engine import Engine


def build(engine: Engine) -> tuple[Callable, list[gr.components.Component]]:
    """Lay out the panel; return (the report function, its outputs) for other events to refresh it."""
    with gr.Accordion("System", open=False, elem_id="system"):
        summary = gr.Markdown()
        table = gr.Dataframe(headers=["component", "device", "MiB", "in use"], interactive=False, wrap=True)
        refresh = gr.Button("Refresh", size="sm")
    refresh.click(engine.system_report, None, [summary, table], queue=False, api_name="system")
    return engine.system_report, [summary, table]
