"""The studio as an MCP server (Gradio's, `mcp_server=True`): an assistant lists the tabs as tools and calls one."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

pytest.importorskip("mcp", reason='the MCP server needs gradio\'s mcp extra (pip install "gradio[mcp]")')

from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from pipelines.core.video import read_video

# Each tab's API endpoint is a tool of the same name (its api_name; on a Space Gradio prefixes the Space's name).
TAB_TOOLS = {"timelapse", "identity", "identity_faces", "safe_generate", "segment", "segment_refine"}
CALL_TIMEOUT_S = 120


def over_mcp(url: str, work, transport: str = "http"):
    """Run `work(session)` in an initialised MCP client session against the studio at `url`; return its result."""
    async def main():
        if transport == "sse":
            opened = sse_client(url + "gradio_api/mcp/sse")
        else:
            opened = streamable_http_client(url + "gradio_api/mcp/")
        async with opened as streams, ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            return await asyncio.wait_for(work(session), CALL_TIMEOUT_S)
    return asyncio.run(main())


async def tools_of(session: ClientSession) -> dict:
    return {tool.name: tool for tool in (await session.list_tools()).tools}


@pytest.fixture(scope="module")
def tools(server) -> dict:
    _, url = server
    return over_mcp(url, tools_of)


def test_every_tab_is_a_tool_described_for_an_assistant(tools):
    assert TAB_TOOLS <= set(tools), f"tools listed: {sorted(tools)}"
    for name in TAB_TOOLS:
        tool = tools[name]
        # The docstring's first paragraph, then Gradio's "Returns: ..." from its Returns section.
        assert len(tool.description) > 80 and "Returns: " in tool.description, name
        properties = tool.inputSchema["properties"]
        undescribed = [p for p, schema in properties.items() if not schema.get("description")]
        assert properties and not undescribed, f"{name}: parameters without a description (Args:): {undescribed}"
    timelapse = tools["timelapse"]
    assert timelapse.description.startswith("Generate a metamorphic time-lapse video")
    assert timelapse.inputSchema["required"] == ["prompt"]
    assert timelapse.inputSchema["properties"]["num_frames"]["default"] == 16
    assert "8 to 64" in timelapse.inputSchema["properties"]["num_frames"]["description"]
    # File inputs are URLs (or data: URIs) over MCP.
    assert tools["segment"].inputSchema["properties"]["video"]["type"] == "string"


def test_the_sse_transport_lists_the_same_tools(server, tools):
    _, url = server
    assert set(over_mcp(url, tools_of, transport="sse")) == set(tools)


def test_the_timelapse_tool_makes_a_playable_clip(server, tmp_path):
    _, url = server
    progress: list[str] = []

    async def call(session: ClientSession):
        async def note(done, total, message):
            progress.append(message or "")

        arguments = {"prompt": "ice melting", "num_frames": 8, "steps": 2, "seed": 7}
        streamed = await session.call_tool("timelapse", arguments, progress_callback=note)
        plain = await session.call_tool("timelapse", {**arguments, "steps": 1})   # a client that asks no progress
        return streamed, plain

    streamed, plain = over_mcp(url, call)
    assert not streamed.isError, streamed.content
    clip, summary, info = (item.text for item in streamed.content)     # one content item per output
    assert re.fullmatch(re.escape(url) + r"gradio_api/file=\S+\.mp4", clip), clip
    assert "**Seed** 7 · 8 frames at 8 fps · 64×64" in summary
    assert "'num_frames': 8" in info and "'steps': 2" in info
    assert any("Step" in message for message in progress), progress    # the step bar reaches the client
    path = tmp_path / "clip.mp4"
    path.write_bytes(httpx.get(clip, timeout=30).raise_for_status().content)
    frames, fps, codec = read_video(path)
    assert frames.shape == (8, 64, 64, 3) and fps == 8 and codec == "h264"
    # Without a progress token Gradio returns the outputs as one text; the clip's URL is in it.
    assert not plain.isError and re.search(re.escape(url) + r"gradio_api/file=\S+\.mp4", plain.content[0].text)


def test_a_refused_call_is_a_tool_error_with_the_reason(server):
    _, url = server

    async def call(session: ClientSession):
        return await session.call_tool("timelapse", {"prompt": ""})

    result = over_mcp(url, call)
    assert result.isError and "Write a prompt" in result.content[0].text
