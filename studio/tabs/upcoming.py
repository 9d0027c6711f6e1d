"""Tabs whose work has not landed yet: one line each, no controls that do nothing."""

import gradio as gr

UPCOMING = {
    "segmentation": ("Referring segmentation", "A video + “the dog on the left” → masks and an overlay video."),
}


def build(tab: str) -> None:
    title, what = UPCOMING[tab]
    with gr.Tab(title, id=tab):
        gr.Markdown(f"**Coming soon.** {what} This tab has not landed yet.", elem_classes="studio-upcoming")
