"""Weights files in the Hugging Face cache that were cut short are refused with a message, never loaded; a
download that fails names the repository and the file; the download command fetches an incomplete file again."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

import pipelines.core.hub as hub
from pipelines.core.errors import WeightsError
from pipelines.core.hub import HubFile, IncompleteWeightsError, check_complete
from pipelines.identity.models import identity_downloads
from pipelines.sd15.models import MAGICTIME, STYLES
from pipelines.timelapse.models import timelapse_downloads

REPO, NAME = MAGICTIME, STYLES["ToonYou"]


@pytest.fixture
def snapshot(monkeypatch, tmp_path) -> Path:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_CHECKED", set())
    repo = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    return repo / "snapshots" / sha


def _safetensors(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3, 3)}, path)
    return path.read_bytes()


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_a_complete_safetensors_file_passes_and_is_not_read_again(snapshot, monkeypatch):
    _safetensors(snapshot / NAME)
    assert HubFile(REPO, NAME).path() == snapshot / NAME
    monkeypatch.setattr(hub, "_structure_problem", lambda *a: pytest.fail("read again"))
    assert HubFile(REPO, NAME).path() == snapshot / NAME


@pytest.mark.parametrize("keep", [0, 5, 40, -1, -100])
def test_a_cut_safetensors_file_is_refused_naming_repository_file_and_command(snapshot, keep):
    data = _safetensors(snapshot / NAME)
    _cut(snapshot / NAME, keep if keep >= 0 else len(data) + keep)
    with pytest.raises(IncompleteWeightsError) as caught:
        HubFile(REPO, NAME).path()
    message = str(caught.value)
    assert NAME in message and REPO in message and "incomplete" in message
    assert ".venv/bin/python -m studio download" in message


def test_a_safetensors_file_with_bytes_after_its_tensors_is_refused(snapshot):
    """Two interrupted copies over each other can leave a file *longer* than its header says."""
    data = _safetensors(snapshot / NAME)
    (snapshot / NAME).write_bytes(data + b"\0" * 10)
    with pytest.raises(IncompleteWeightsError, match=f"{len(data) + 10:,} bytes where its tensors need {len(data):,}"):
        HubFile(REPO, NAME).path()


def test_a_cut_torch_checkpoint_is_refused_and_a_whole_one_loads(snapshot):
    path = snapshot / "Base_Model/motion_module/motion_module.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1000)}, path)
    assert HubFile(REPO, "Base_Model/motion_module/motion_module.ckpt").path() == path
    hub._CHECKED.clear()
    _cut(path, path.stat().st_size - 30)
    with pytest.raises(IncompleteWeightsError, match="zip directory is missing"):
        HubFile(REPO, "Base_Model/motion_module/motion_module.ckpt").path()
    with pytest.raises((RuntimeError, OSError)):     # what loading it would have said instead (no file named)
        torch.load(path, weights_only=True)


def test_a_cut_json_config_is_refused(snapshot):
    path = snapshot / "Base_Model/stable-diffusion-v1-5/unet/config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"in_channels": 4, "block_out_channels": [320, 640]})[:20])
    with pytest.raises(IncompleteWeightsError, match="not valid JSON"):
        HubFile(REPO, "Base_Model/stable-diffusion-v1-5/unet/config.json").path()


def test_check_complete_on_its_own_accepts_unknown_formats(tmp_path):
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    check_complete(tmp_path / "merges.txt", HubFile(REPO, "merges.txt"))


def test_a_download_that_fails_names_the_repository_the_file_and_the_command(snapshot, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: True)

    def reset(repo_id, filename, **kwargs):
        if kwargs.get("local_files_only"):
            from huggingface_hub.errors import LocalEntryNotFoundError
            raise LocalEntryNotFoundError("not cached")
        raise ConnectionResetError("Connection reset by peer")

    monkeypatch.setattr(hub, "hf_hub_download", reset)
    with pytest.raises(WeightsError) as caught:
        HubFile(REPO, NAME).path()
    message = str(caught.value)
    assert f"Downloading {NAME} from {REPO} failed (ConnectionResetError" in message
    assert ".venv/bin/python -m studio download" in message


def test_the_download_command_fetches_an_incomplete_file_again(snapshot, monkeypatch, capsys):
    """`python -m studio download` over a cache with one cut file: that file is fetched again (force), the
    rest are left alone, and the command succeeds."""
    from studio.__main__ import main
    from tests.test_real_loading import write_complete

    files = timelapse_downloads()
    for file in files:
        write_complete(snapshot / file.filename)
    whole = (snapshot / NAME).read_bytes()
    _cut(snapshot / NAME, 30)
    forced = []

    def download(repo_id, filename, local_files_only=False, force_download=False, repo_type="model"):
        if force_download:
            forced.append(filename)
            (snapshot / filename).write_bytes(whole)
        return str(snapshot / filename)

    monkeypatch.setattr(hub, "hf_hub_download", download)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["download", "--tab", "timelapse"]) == 0
    out = capsys.readouterr().out
    assert forced == [NAME]
    assert "is incomplete in the local cache" in out and "Fetching it again." in out
    assert f"All {len(files)} files are in the Hugging Face cache." in out


def test_download_sizes_sums_what_the_hub_lists_for_each_file(monkeypatch, capsys):
    """`download --sizes` asks the hub for each file's size (one request per repository) and prints the sum."""
    from huggingface_hub import HfApi

    from studio.__main__ import main, tab_files

    asked = []

    def paths_info(self, repo_id, paths, **kwargs):
        asked.append(repo_id)
        return [SimpleNamespace(path=p, size=1_000_000 * (i + 1)) for i, p in enumerate(paths)]

    monkeypatch.setattr(HfApi, "get_paths_info", paths_info)
    assert main(["download", "--sizes", "--tab", "segmentation"]) == 0
    files = tab_files(["segmentation"])
    by_repo = {}
    for f in files:
        by_repo[f.repo_id] = by_repo.get(f.repo_id, 0) + 1
    expected = sum(n * (n + 1) // 2 for n in by_repo.values()) * 1_000_000
    assert f"{expected / 1e9:8.3f} GB  in all, {len(files)} files" in capsys.readouterr().out
    assert asked == list(by_repo)


def test_download_sizes_offline_says_it_needs_the_hub(monkeypatch, capsys):
    from huggingface_hub import HfApi

    from studio.__main__ import main

    def offline(self, *args, **kwargs):
        raise ConnectionError("no route")

    monkeypatch.setattr(HfApi, "get_paths_info", offline)
    assert main(["download", "--sizes"]) == 1
    assert "sizes need internet access" in capsys.readouterr().err


def test_the_two_generating_tabs_share_one_realistic_vision_download():
    from studio.__main__ import tab_files

    files = tab_files(["timelapse", "identity"])
    assert len(files) == len(set(files))
    assert sum(f.filename == NAME.replace("ToonYou_beta6", "RealisticVisionV60B1_v51VAE") for f in files) == 1


def test_the_spaces_front_matter_preloads_exactly_what_the_tabs_download():
    """The Space fetches its weights at build time from README.md's `preload_from_hub`; a file missing there would
    download on someone's first click instead (or fail), a file too many wastes the build. Only files a model
    repository is known to hold belong there (preload_from_hub takes model repositories): the rest (animator.ckpt,
    with the ID-Animator Space as its second source) the studio's own preload fetches at start-up."""
    from pipelines.segmentation.models import SegmentationRegistry
    from tests.test_spaces import front_matter

    front = front_matter()
    preloaded = {(line.split(" ", 1)[0], name) for line in front["preload_from_hub"]
                 for name in line.split(" ", 1)[1].split(",")}
    files = [*timelapse_downloads(), *identity_downloads(),
             *SegmentationRegistry("real").default_downloads()]
    assert preloaded == {(f.repo_id, f.filename) for f in files if f.preloadable}
    assert ("ID-Animator/ID-Animator", "animator.ckpt") not in preloaded
    assert {repo for repo, _ in preloaded} <= set(front["models"])
