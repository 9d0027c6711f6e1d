"""System panel: what the model cache holds and how it has behaved."""

from collections.abc import Callable

import gradio as gr

from studio.engine import SYSTEM_COLUMNS, Engine


def build(engine: Engine) -> tuple[Callable, list[gr.components.Component]]:
    """Lay out the panel; return (the report function, its outputs) for other events to refresh it."""
    with gr.Accordion("System", open=False, elem_id="system"):
        summary = gr.Markdown()
        table = gr.Dataframe(headers=SYSTEM_COLUMNS, interactive=False, wrap=True, elem_id="system-table",
                             column_widths=["18%", "30%", "26%", "8%", "9%", "9%"])
        with gr.Accordion("Cache keys (what each entry is, exactly)", open=False):
            keys = gr.JSON(show_label=False)
        refresh = gr.Button("Refresh", size="sm")
    refresh.click(engine.system_report, None, [summary, table, keys], queue=False, api_name="system")
    return engine.system_report, [summary, table, keys]
