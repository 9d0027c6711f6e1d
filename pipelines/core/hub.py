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

from pipelines.core.errors import WeightsError

PROBE_TIMEOUT_S = 5.0
DOWNLOAD_COMMAND = ".venv/bin/python -m studio download"


MODEL, SPACE = "model", "space"
_SERVED: dict[tuple[str, str], str] = {}     # (first repo, filename) -> the source that served it, as said


def source_name(repo_id: str, repo_type: str) -> str:
    """A source as a person types it on the hub: "ID-Animator/ID-Animator", "spaces/ID-Animator/ID-Animator"."""
    return repo_id if repo_type == MODEL else f"{repo_type}s/{repo_id}"


def _not_there(error: Exception) -> bool:
    """The hub's "this repository (or file) does not exist here" (a 404), as opposed to a failed transfer."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    return isinstance(error, EntryNotFoundError | RepositoryNotFoundError | RevisionNotFoundError)


@dataclass(frozen=True)
class HubFile:
    """One file the studio reads, and where to get it: `repo_id` first, then each of `fallbacks`
    ((repo_id, repo_type) pairs) in order. A file with fallbacks is one whose first source is not known to hold
    it (ID-Animator's own instructions fetch animator.ckpt from its Space, and nothing public shows the model
    repository holding it): the first source that has it serves it, and `served_from` says which."""

    repo_id: str
    filename: str
    fallbacks: tuple[tuple[str, str], ...] = ()

    @property
    def sources(self) -> tuple[tuple[str, str], ...]:
        return ((self.repo_id, MODEL), *self.fallbacks)

    @property
    def preloadable(self) -> bool:
        """Spaces' preload_from_hub takes model repositories only, and only a file known to be there belongs in it."""
        return not self.fallbacks

    def describe(self) -> str:
        """"repo: file", with the fallbacks said: what the download command and the missing-weights message print."""
        if not self.fallbacks:
            return f"{self.repo_id}: {self.filename}"
        return f"{self.repo_id}: {self.filename} (else {', then '.join(source_name(*s) for s in self.fallbacks)})"

    def path(self, force: bool = False) -> Path:
        """Local path, downloading the file if it is not cached and the hub can be reached. A cached file is
        checked for completeness first (see `check_complete`): a half-written one is refused, not loaded.
        `force`: fetch it again whatever the cache holds (the download command does, for an incomplete one).
        Sources are tried in order; one that answers "not found" (a 404) passes to the next, any other failure
        stops (a reset connection is not a reason to fetch a file from somewhere else)."""
        cached = None if force else self.cached()
        if cached is not None:
            check_complete(cached, self)
            return cached
        ensure_available([self], force=force)
        absent = []
        for repo_id, repo_type in self.sources:
            try:
                path = Path(hf_hub_download(repo_id, self.filename, repo_type=repo_type, force_download=force))
            except Exception as error:   # connection reset, timeout, disk full, 404: the hub's many kinds
                if _not_there(error):
                    absent.append(source_name(repo_id, repo_type))
                    continue
                raise WeightsError(
                    f"Downloading {self.filename} from {source_name(repo_id, repo_type)} failed "
                    f"({type(error).__name__}: {str(error)[:200]}). Run {DOWNLOAD_COMMAND} again (it resumes), or "
                    f"pre-download on a machine with internet access and copy the Hugging Face cache "
                    f"({constants.HF_HUB_CACHE})."
                ) from None
            _SERVED[(self.repo_id, self.filename)] = source_name(repo_id, repo_type)
            check_complete(path, self)
            return path
        raise WeightsError(f"None of the sources of {self.filename} holds it ({', '.join(absent)} answered "
                           "“not found”): the weights have moved; see the README's Weights section.")

    def cached(self) -> Path | None:
        for repo_id, repo_type in self.sources:
            try:
                path = Path(hf_hub_download(repo_id, self.filename, repo_type=repo_type, local_files_only=True))
            except LocalEntryNotFoundError:
                continue
            _SERVED[(self.repo_id, self.filename)] = source_name(repo_id, repo_type)
            return path
        return None


def served_from(file: HubFile) -> str | None:
    """The source that served (or holds in the local cache) `file` in this process; None before it was looked up."""
    return _SERVED.get((file.repo_id, file.filename))


class MissingWeightsError(WeightsError):
    """Weights are neither cached nor downloadable. The message names every missing file and what to do."""

    def __init__(self, missing: list[HubFile], reason: str):
        self.missing = missing
        self.repo_ids = list(dict.fromkeys(f.repo_id for f in missing))
        def listed(repo: str) -> str:   # a few files by name, many by count: this message lands in a toast
            files = [f for f in missing if f.repo_id == repo]
            names = [f.filename + "".join(f", or from {source_name(*s)}" for s in f.fallbacks) for f in files]
            return f"{repo} ({', '.join(names) if len(names) <= 3 else f'{len(names)} files'})"

        super().__init__(
            f"Model weights are missing from the local cache — {'; '.join(map(listed, self.repo_ids))} — and "
            f"{reason}. Either pre-download "
            f"them on a machine with internet access ({DOWNLOAD_COMMAND}, then copy the Hugging Face "
            f"cache, {constants.HF_HUB_CACHE}), or run the studio with STUDIO_PROFILE=tiny to try it with small "
            f"random test models."
        )


class IncompleteWeightsError(WeightsError):
    """A cached weights file that was cut short (a copy or download interrupted outside the hub client)."""


_CHECKED: set[tuple[str, int, int]] = set()     # (path, size, mtime_ns) already found complete


def check_complete(path: Path, file: HubFile) -> None:
    """Refuse a weights file that ends before its own structure says it should. The hub client writes to
    `.incomplete` and renames when done, so this catches what it cannot: a cache copied with `cp` or `rsync`
    that was interrupted, a disk that filled up. The checks read only headers and trailers (milliseconds for
    a 2 GB file), against what each format declares:
    - safetensors: an 8-byte header length, a JSON header, and tensors whose last byte is the file's last;
    - torch's zip checkpoints (.ckpt/.bin/.pt/.pth): the zip directory at the end of the file;
    - JSON configs: they parse.
    A file that passes once is not read again while its size and time stay the same."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED:
        return
    problem = _structure_problem(path, stat.st_size)
    if problem:
        raise IncompleteWeightsError(
            f"{file.filename} from {file.repo_id} is incomplete in the local cache ({problem}): delete "
            f"{path} and fetch it again with {DOWNLOAD_COMMAND}."
        )
    _CHECKED.add(key)


def _structure_problem(path: Path, size: int) -> str | None:
    import json
    import struct
    import zipfile

    suffix = path.name.rsplit(".", 1)[-1].lower() if "." in path.name else ""
    if size == 0:
        return "the file is empty"
    if suffix == "safetensors":
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            (length,) = struct.unpack("<Q", head)
            if 8 + length > size:
                return f"its header declares {length} bytes of metadata but the file has {size} bytes"
            try:
                header = json.loads(f.read(length))
            except ValueError:
                return "its header is not valid JSON"
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + length + end != size:
            return f"{size:,} bytes where its tensors need {8 + length + end:,}"
    elif suffix in ("ckpt", "bin", "pt", "pth"):
        with path.open("rb") as f:
            if f.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path):
                return f"{size:,} bytes and no end: the checkpoint's zip directory is missing"
    elif suffix == "json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return "not valid JSON"
    return None


def hub_folder(repo_id: str, filenames: Sequence[str]) -> Path:
    """The local folder that holds `filenames` (paths in `repo_id`) once each is fetched: for loaders that
    take a folder (`from_pretrained`) but should fetch only the files they need."""
    paths = [HubFile(repo_id, name).path() for name in filenames]
    shared = os.path.commonprefix([PurePosixPath(name).parent.parts for name in filenames])
    return paths[0].parents[len(PurePosixPath(filenames[0]).parts) - len(shared) - 1]


def ensure_available(files: list[HubFile], force: bool = False) -> None:
    """Fail fast, naming every file at once, when some of `files` are not cached and cannot be downloaded.
    Checked before a call loads anything, so a person learns in one message what is missing."""
    missing = [f for f in files if force or f.cached() is None]
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
