"""CLIP-space statistics of generated clips: the CLIP score of a clip against its prompt, and how a clip changes over time.

The model is CLIP ViT-L/14 (`openai/clip-vit-large-patch14`), the CLIP whose text tower is SD1.5's text encoder
(profile "real"), or a random CLIP of the same class at toy size (profile "tiny": no files, no network). Used by
`python -m studio.evaluate timelapse|safety --run DIR`.

With e_1 … e_N a clip's frame embeddings (CLIP image features, each L2-normalised: ê = e / ‖e‖), t the prompt's
(normalised) text embedding and cos(u, v) = u·v / (‖u‖ ‖v‖):

- CLIP score S = (1/N) Σ_i 100 · max(cos(ê_i, t), 0)                                     (`ClipScorer.clip_score`)
- window k = max(1, round(N / 8)), the first and the last eighth of the clip                   (`window`)
- metamorphic amplitude A = 1 − cos(m_first, m_last), m_first = (1/k) Σ_{i≤k} ê_i,
  m_last = (1/k) Σ_{i>N−k} ê_i; in [0, 2], 0 for a still clip                                  (`amplitude`)
- temporal coherence C = (1/(N−1)) Σ_{i<N} cos(ê_i, ê_{i+1}); in [−1, 1], 1 for identical frames (`coherence`)

Amplitude and coherence are proxies computed in CLIP image space. They are **not** ChronoMagic-Bench's MTScore
(InternVideo2 video-text retrieval against time-lapse captions) or CHScore (CoTracker point tracks): comparable
between runs of this studio, not with the benchmark's leaderboard.
"""

from __future__ import annotations

import functools

import numpy as np

CLIP_L = "openai/clip-vit-large-patch14"
# What from_pretrained reads of the repository (its layout on the hub): the model in safetensors (not
# pytorch_model.bin, flax_model.msgpack or tf_model.h5, which hold the same weights), the tokenizer (tokenizer.json,
# and the vocab.json / merges.txt it is built from) and the image processor's settings.
CLIP_L_FILES = (
    "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.json", "merges.txt",
)
MAX_TOKENS = 77         # CLIP's context length: longer prompts are cut, as SD1.5's text encoder cuts them
BATCH = 16              # frames per forward pass of the image tower
PROFILES = ("real", "tiny")


# ------------------------------------------------------------------------------------------- the model, two profiles
def tiny_model():
    """A random CLIPModel at toy size (seeded: the same weights in every process), whose text tower reads the tiny
    SD1.5 tokenizer's ids and whose image tower reads the tiny image processor's 32x32 crops."""
    from transformers import CLIPConfig, CLIPModel

    from pipelines.core.tiny import build, seed_of
    from pipelines.sd15 import tiny

    config = CLIPConfig(
        text_config={"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1, "hidden_size": 32,
                     "intermediate_size": 37, "num_attention_heads": 2, "num_hidden_layers": 2,
                     "vocab_size": len(tiny.tokenizer()), "max_position_embeddings": MAX_TOKENS},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_attention_heads": 2, "num_hidden_layers": 2},
        projection_dim=16,
    )
    return build(CLIPModel, seed_of("evaluate", "clip"), config=config)


def _load(profile: str):
    """(model, tokenizer, image processor) of `profile`. "real" checks first that every file of CLIP_L_FILES is
    cached or downloadable (one message naming what is missing), then fetches only those files."""
    if profile == "tiny":
        from pipelines.sd15 import tiny

        return tiny_model(), tiny.tokenizer(), tiny.image_processor()
    if profile != "real":
        raise ValueError(f"Unknown CLIP profile {profile!r}: expected one of {', '.join(PROFILES)}.")
    import torch
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    from pipelines.core.hub import HubFile, ensure_available, hub_folder

    ensure_available([HubFile(CLIP_L, f) for f in CLIP_L_FILES])
    folder = hub_folder(CLIP_L, CLIP_L_FILES)
    model = CLIPModel.from_pretrained(folder, dtype=torch.float32)
    return model, CLIPTokenizer.from_pretrained(folder), CLIPImageProcessorPil.from_pretrained(folder)


def _features(output):
    """The projected features of get_image_features / get_text_features: a tensor in transformers 4, the output's
    pooler_output (projected there) in transformers 5."""
    return output if hasattr(output, "shape") else output.pooler_output


def _normalised_rows(x: np.ndarray, what: str) -> np.ndarray:
    """Each row divided by its L2 norm, in float64; a zero row has no direction and is refused."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError(f"{what} has a zero or non-finite vector: it has no direction to compare.")
    return x / norms


class ClipScorer:
    """CLIP's image and text embeddings of clips and prompts, and the CLIP score (see the module's docstring)."""

    def __init__(self, profile: str, device: str = "cpu"):
        self.profile, self.device = profile, device
        model, self.tokenizer, self.processor = _load(profile)
        self.model = model.to(device).eval()

    def image_embeddings(self, frames: np.ndarray) -> np.ndarray:
        """(T, D) float64 image embeddings of `frames` ((T, H, W, 3) uint8 RGB), each row L2-normalised:
        ê_i = f(x_i) / ‖f(x_i)‖ with f CLIP's get_image_features (vision tower, then its projection) on the image
        processor's resized, centre-cropped, normalised frame. BATCH frames per forward pass."""
        import torch

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
            raise ValueError(f"Frames must be a (T, H, W, 3) array with T ≥ 1, not of shape {frames.shape}.")
        if frames.dtype != np.uint8:
            raise ValueError(f"Frames must be uint8 RGB (0-255), not {frames.dtype}.")
        out = []
        with torch.inference_mode():
            for start in range(0, len(frames), BATCH):
                batch = self.processor(images=list(frames[start:start + BATCH]), return_tensors="pt")
                pixels = batch["pixel_values"].to(self.device, dtype=self.model.dtype)
                out.append(_features(self.model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        return _normalised_rows(np.concatenate(out), "an image embedding")

    def text_embedding(self, text: str) -> np.ndarray:
        """(D,) float64 text embedding of `text`, L2-normalised: t = g(text) / ‖g(text)‖ with g CLIP's
        get_text_features (text tower at the end-of-text token, then its projection); the text is cut to
        MAX_TOKENS = 77 tokens, start and end tokens included."""
        import torch

        tokens = self.tokenizer(text, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with torch.inference_mode():
            features = _features(self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device)))
        return _normalised_rows(features.float().cpu().numpy(), "the text embedding")[0]

    def clip_score(self, frames: np.ndarray, text: str) -> float:
        """CLIP score of a clip against `text`: S = (1/T) Σ_i 100 · max(cos(ê_i, t), 0), in [0, 100].

        Per frame this is the CLIP score of Hessel et al. 2021 in the "100 · max(cos, 0)" convention that the
        text-to-video papers' CLIPSIM and torchmetrics' CLIPScore use, *not* Hessel's CLIP-S = 2.5 · max(cos, 0)
        (no w = 2.5 here); the clip's score is the mean over its frames."""
        cosines = self.image_embeddings(frames) @ self.text_embedding(text)
        return float(np.mean(100.0 * np.maximum(cosines, 0.0)))


@functools.lru_cache(maxsize=4)
def scorer(profile: str, device: str = "cpu") -> ClipScorer:
    """One ClipScorer per (profile, device) in a process: the real model loads once (about 1.7 GB)."""
    return ClipScorer(profile, device)


# ------------------------------------------------------------------------------------- statistics of a clip's frames
def window(n: int) -> int:
    """k = max(1, round(n / 8)): how many frames make the first (and the last) eighth of an n-frame clip. Python's
    round, which rounds halves to even: 8 → 1, 12 → 2, 16 → 2, 20 → 2, 24 → 3."""
    if n < 1:
        raise ValueError(f"A clip has at least one frame, not {n}.")
    return max(1, round(n / 8))


def _cos(u: np.ndarray, v: np.ndarray, what: str) -> float:
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu == 0 or nv == 0:
        raise ValueError(f"{what} is the zero vector: its direction, and so its cosine, is undefined.")
    return float(np.clip(np.dot(u, v) / (nu * nv), -1.0, 1.0))


def _embedding_rows(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"Embeddings must be a (N, D) array with N ≥ 1, not of shape {embeddings.shape}.")
    return _normalised_rows(embeddings, "an embedding")


def amplitude(embeddings: np.ndarray) -> float:
    """Metamorphic amplitude A = 1 − cos(m_first, m_last) of a clip's (N, D) frame embeddings, where rows are first
    L2-normalised (ê_i = e_i / ‖e_i‖), k = window(N), m_first = (1/k) Σ_{i=1..k} ê_i, m_last = (1/k) Σ_{i=N−k+1..N} ê_i
    and cos(u, v) = u·v / (‖u‖ ‖v‖). In [0, 2]: 0 when the clip ends where it starts (a still clip; also any
    one-frame clip), 1 when its end is orthogonal to its start in CLIP image space."""
    e = _embedding_rows(embeddings)
    k = window(len(e))
    return 1.0 - _cos(e[:k].mean(axis=0), e[-k:].mean(axis=0), "The mean of the first or last frames' embeddings")


def coherence(embeddings: np.ndarray) -> float:
    """Temporal coherence C = (1/(N−1)) Σ_{i=1..N−1} cos(e_i, e_{i+1}) of a clip's (N, D) frame embeddings (rows
    L2-normalised first, so cos(e_i, e_{i+1}) = ê_i·ê_{i+1}). In [−1, 1]: 1 for identical frames, lower the more
    consecutive frames differ. Needs N ≥ 2 (a one-frame clip has no consecutive pair)."""
    e = _embedding_rows(embeddings)
    if len(e) < 2:
        raise ValueError("Temporal coherence needs at least two frames (consecutive pairs); this clip has one.")
    return float(np.mean(np.clip(np.sum(e[:-1] * e[1:], axis=1), -1.0, 1.0)))
