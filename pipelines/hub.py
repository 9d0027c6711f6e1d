"""Getting files from the Hugging Face Hub: cache first, fail fast and helpfully when it is out of reach.

Without this, a machine with no route to the hub spends minutes in retries before it fails, and a
tokenizer may even "load" empty. So: look in the local cache first; if the file is not there, check in
a few seconds whether the hub answers at all, and only then download (with tqdm progress, which the
UI shows through `gr.Progress(track_tqdm=True)`).
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError

from pipelines.errors import WeightsError

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str

    def path(self) -> Path:
        """Local path, downloading the file if it is not cached and the hub can be reached."""
        cached = self.cached()
        if cached is not None:
            return cached
        ensure_available([self])
        return Path(hf_hub_download(self.repo_id, self.filename))

    def cached(self) -> Path | None:
        try:
            return Path(hf_hub_download(self.repo_id, self.filename, local_files_only=True))
        except LocalEntryNotFoundError:
            return None


class MissingWeightsError(WeightsError):
    """Weights are neither cached nor downloadable. The message names every missing file and what to do."""

    def __init__(self, missing: list[HubFile], reason: str):
        self.missing = missing
        self.repo_ids = list(dict.fromkeys(f.repo_id for f in missing))
        def listed(repo: str) -> str:   # a few files by name, many by count: this message lands in a toast
            names = [f.filename for f in missing if f.repo_id == repo]
            return f"{repo} ({', '.join(names) if len(names) <= 3 else f'{len(names)} files'})"

        super().__init__(
            f"Model weights are missing from the local cache — {'; '.join(map(listed, self.repo_ids))} — and "
            f"{reason}. Either pre-download "
            f"them on a machine with internet access (.venv/bin/python -m studio download, then copy the Hugging Face "
            f"cache, {constants.HF_HUB_CACHE}), or run the studio with STUDIO_PROFILE=tiny to try it with small "
            f"random test models."
        )


def hub_folder(repo_id: str, filenames: Sequence[str]) -> Path:
    """The local folder that holds `filenames` (paths in `repo_id`) once each is fetched: for loaders that
    take a folder (`from_pretrained`) but should fetch only the files they need."""
    paths = [HubFile(repo_id, name).path() for name in filenames]
    shared = os.path.commonprefix([PurePosixPath(name).parent.parts for name in filenames])
    return paths[0].parents[len(PurePosixPath(filenames[0]).parts) - len(shared) - 1]


def ensure_available(files: list[HubFile]) -> None:
    """Fail fast, naming every file at once, when some of `files` are not cached and cannot be downloaded.
    Checked before a call loads anything, so a person learns in one message what is missing."""
    missing = [f for f in files if f.cached() is None]
    if not missing:
        return
    if _offline():
        raise MissingWeightsError(missing, "offline mode is on (HF_HUB_OFFLINE=1)")
    if not hub_reachable():
        raise MissingWeightsError(missing, f"the hub ({constants.ENDPOINT}) cannot be reached")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to the hub endpoint opens within `timeout` seconds.

    The probe runs in a thread because name resolution ignores socket timeouts and can hang on a
    machine with no network.
    """
    url = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT))
    port = url.port or (443 if url.scheme == "https" else 80)

    def connect() -> bool:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout)
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
