"""System panel: what the model cache holds and how it has behaved."""

import re
from collections.abc import Callable

import gradio as gr

from studio.engine import Engine


def build(engine: Engine) -> tuple[Callable, list[gr.components.Component]]:
    """Lay out the panel; return (the report function, its outputs) for other events to refresh it."""
    with gr.Accordion("System", open=False, elem_id="system"):
        # Labels name the outputs in the API's description (view_api), so a client reads them by name, not position.
        summary = gr.Markdown(label="summary")
        table = gr.Dataframe(headers=SYSTEM_COLUMNS, label="components", show_label=False, interactive=False,
                             wrap=True, elem_id="system-table",
                             column_widths=["18%", "30%", "26%", "8%", "9%", "9%"])
        with gr.Accordion("Cache keys (what each entry is, exactly)", open=False):
            keys = gr.JSON(label="keys", show_label=False)
        refresh = gr.Button("Refresh", size="sm")

    def system():
        """What the studio's model cache holds now: memory per device against its budget, and every cached model.

        Returns:
            summary: Markdown: profile, device, memory in use per device, budgets, loads and evictions so far.
            table: one row per cached component (name, where it lives, size, lock state).
            keys: the full cache keys, for exact identification.
        """
        return report(engine)

    refresh.click(system, None, [summary, table, keys], queue=False, api_name="system")
    return system, [summary, table, keys]


def report(engine: Engine) -> tuple[str, list[list], list[str]]:
    """(summary Markdown, a row per cached component, the full cache keys)."""
    stats = engine.cache.stats()
    gib = lambda n: f"{n / 2**30:.2f} GiB" if n is not None else "no limit"  # noqa: E731
    resident = ", ".join(f"{dev}: {gib(n)}" for dev, n in stats["bytes_by_device"].items()) or "nothing loaded"
    summary = (
        f"**Profile** `{engine.settings.profile}` · **device** `{stats['device']}` · "
        f"**dtype** `{engine.settings.dtype}`  \n"
        f"**Resident** {resident} · **device budget** {gib(stats['device_budget'])} · "
        f"**RAM budget** {gib(stats['ram_budget'])}  \n"
        f"**Hits** {stats['hits']} · **misses** {stats['misses']} · **loads** {stats['loads']} "
        f"({stats['load_seconds']:.1f} s) · **offloads** {stats['offloads']} · **drops** {stats['drops']} · "
        f"**over budget** {stats['over_budget']}"
    )
    sources = hub_sources(engine)
    if sources:
        summary += f"  \n**Hub sources** {sources}"
    rows = [[*describe_key(c["key"]), c["device"], round(c["bytes"] / 2**20, 1), "yes" if c["locked"] else ""]
            for c in stats["components"]]
    keys = [c["key"] for c in stats["components"]]
    return summary, rows, keys


def hub_sources(engine: Engine) -> str:
    """Where each file that has more than one possible source came from (real profile): "animator.ckpt from
    spaces/ID-Animator/ID-Animator", or the order they will be tried in before it was fetched."""
    if engine.settings.profile != "real":
        return ""
    from pipelines.core.hub import served_from, source_name
    from pipelines.identity.models import identity_downloads
    from pipelines.timelapse.models import timelapse_downloads

    files = [f for f in (*timelapse_downloads(), *identity_downloads()) if f.fallbacks]
    said = []
    for file in dict.fromkeys(files):
        served = served_from(file)
        said.append(f"{file.filename.rsplit('/', 1)[-1]} from {served}" if served else
                    f"{file.filename.rsplit('/', 1)[-1]} not fetched yet (asked in this order: "
                    f"{', '.join(source_name(*s) for s in file.sources)})")
    return " · ".join(said)


SYSTEM_COLUMNS = ["component", "from", "adapters", "device", "MiB", "in use"]
_COMPONENT_NAMES = {
    "unet-motion": "motion UNet", "unet2d": "2-D UNet", "clip-text": "CLIP text encoder", "vae": "VAE",
    "tokenizer": "tokenizer", "motion-adapter": "motion adapter", "clip-vision": "image encoder",
    "clip-image-processor": "image processor", "grounder": "grounder", "grounder-processor": "grounder processor",
    "sam2-video": "SAM 2 tracker", "vdit-unet3d": "VD-IT video UNet", "vdit-vae": "VD-IT VAE",
    "vdit-clip-text": "VD-IT text encoder", "vdit-tokenizer": "VD-IT tokenizer",
    "vdit-clip-vision": "VD-IT image encoder",
    "vdit-clip-processor": "VD-IT image processor", "vdit-roberta": "VD-IT RoBERTa",
    "vdit-roberta-tokenizer": "VD-IT RoBERTa tokenizer", "vdit-head": "VD-IT head", "taesd": "tiny decoder",
}


def describe_key(key: str) -> tuple[str, str, str]:
    """A cache key ("profile|kind|source…|+adapter…|dtype") as a person reads it: (component, from which
    files, with which adapters), file names without their folders."""
    parts = key.split("|")
    kind, rest = (parts[1], parts[2:]) if len(parts) > 1 else (parts[0], [])
    if rest and rest[-1] in ("float32", "float16", "bfloat16"):
        kind, rest = f"{_COMPONENT_NAMES.get(kind, kind)} ({rest[-1]})", rest[:-1]
    else:
        kind = _COMPONENT_NAMES.get(kind, kind)

    def name(part: str) -> str:     # ".../magic_adapter_s/magic_adapter_s.ckptx4" -> "magic_adapter_s.ckpt ×4"
        return re.sub(r"(\.\w+)x(\d+)$", r"\1 ×\2", part.rstrip("/").rsplit("/", 1)[-1])

    sources = [name(p) for p in rest if not p.startswith("+")]
    adapters = [name(p[1:]) for p in rest if p.startswith("+")]
    return kind, ", ".join(sources), ", ".join(adapters)
