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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError

from pipelines.errors import WeightsError

PROBE_TIMEOUT_S = 5.0


class MissingWeightsError(WeightsError):
    """Weights are neither cached nor downloadable. The message says what is missing and what to do."""

    def __init__(self, repo_id: str, filename: str, reason: str):
        self.repo_id, self.filename = repo_id, filename
        super().__init__(
            f"Model weights are missing: {filename} from the Hugging Face repository {repo_id} is not in the "
            f"local cache, and {reason}. Either pre-download the weights on a machine with internet access "
            f"(`python -m studio download`, then copy the Hugging Face cache, {constants.HF_HUB_CACHE}), "
            f"or run the studio with STUDIO_PROFILE=tiny to try it with small random test models."
        )


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str

    def path(self) -> Path:
        return hub_path(self.repo_id, self.filename)


def hub_path(repo_id: str, filename: str) -> Path:
    """Local path of `filename` in `repo_id`, downloading it if needed and possible."""
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if _offline():
        raise MissingWeightsError(repo_id, filename, "offline mode is on (HF_HUB_OFFLINE=1)")
    if not hub_reachable():
        raise MissingWeightsError(repo_id, filename, f"the hub ({constants.ENDPOINT}) cannot be reached")
    return Path(hf_hub_download(repo_id, filename))


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
