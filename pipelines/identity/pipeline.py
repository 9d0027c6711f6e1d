"""Identity-preserving video (ID-Animator): 1–4 photos of one person + a prompt -> a clip of that person.

Faces are found, aligned and checked first (clear errors before any model work); the aligned crops go
through the OpenCLIP image encoder, ID-Animator's face adapter turns them into face tokens (averaged over
photos, as the original does) and diffusers' AnimateDiffPipeline samples with them. Afterwards every frame
is compared with the reference faces: the identity report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pipelines.core.cache import ModelCache
from pipelines.core.checks import Progress, check_int, check_number, check_sampling, check_text, noop
from pipelines.core.errors import InputError
from pipelines.identity.faces import FaceAnalyzer, face_similarity, identity_warnings, load_photo
from pipelines.identity.models import ensure_identity_available, identity_models
from pipelines.safety.guard import SafetyGuard, SafetyOptions, with_concepts
from pipelines.sd15.models import Registry
from pipelines.sd15.modes import IDENTITY_MODES, Mode, mode_named
from pipelines.sd15.sampling import (
    LivePreview,
    Preview,
    animatediff,
    decode_frames,
    prompt_warnings,
    step_reporter,
    timed_sampling,
    uses_cfg,
)

# ID-Animator's app appends these to whatever the user writes, joined with a space (`prompt + " 8k uhd, ..."`).
PROMPT_SUFFIX = "8k uhd, high quality, medium shot"
NEGATIVE_SUFFIX = "long shots, full body"
# The negative prompt ID-Animator's demo fills in (ID-Animator/app.py), offered as the default. It is longer than
# CLIP's 77 tokens: CLIP reads its first part and the suffix falls outside, as in the demo; the studio says so in the
# UI once rather than in a toast on every run.
AUTHORS_NEGATIVE = (
    "(deformed iris, deformed pupils, semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime), text, "
    "cropped, out of frame, worst quality, low quality, jpeg artifacts, ugly, duplicate, morbid, mutilated, extra "
    "fingers, mutated hands, poorly drawn hands, poorly drawn face, mutation, deformed, blurry, dehydrated, bad "
    "anatomy, bad proportions, extra limbs, cloned face, disfigured, gross proportions, malformed limbs, missing arms, "
    "missing legs, extra arms, extra legs, fused fingers, too many fingers, long neck, UnrealisticDream"
)
FPS = 9                       # the original's
MIN_PHOTOS, MAX_PHOTOS = 1, 4
MIN_FRAMES, MAX_FRAMES = 8, 16   # v2 motion module: 16 frames is what it was trained on
MAX_IDENTITY_STRENGTH = 1.5


def frame_passes(num_frames: int, guided: bool, windows_sliding: bool = False) -> int:
    """Frames through the UNet per denoising step (the time estimate's input): the clip fits one window of the
    motion module, so every frame once, twice with guidance. `windows_sliding` has no meaning here (no FreeNoise)."""
    return num_frames * (2 if guided else 1)


@dataclass(frozen=True)
class IdentityRequest:
    photos: tuple                 # 1–4 reference photos: paths or RGB uint8 arrays
    prompt: str
    negative_prompt: str = AUTHORS_NEGATIVE   # what the user writes (ID-Animator's demo's); NEGATIVE_SUFFIX appended
    identity_strength: float = 0.8
    num_frames: int = 16
    steps: int = 30
    guidance: float = 8.0
    seed: int = 0
    width: int = 512
    height: int = 512
    safety: SafetyOptions | None = SafetyOptions()   # None: no prompt guard (the output check still runs)
    mode: str = "quality"         # pipelines/sd15/modes.py: "quality", "fast" (Lightning, 4 or 8 steps), "fast-preview"

    @property
    def run_mode(self) -> Mode:
        return mode_named(IDENTITY_MODES, self.mode)

    def validate(self) -> None:
        if self.safety is not None:
            self.safety.validate()
        self.run_mode.check(self.steps, self.guidance)
        check_text("The prompt", self.prompt)
        check_text("The negative prompt", self.negative_prompt)
        if not MIN_PHOTOS <= len(self.photos) <= MAX_PHOTOS:
            raise InputError(f"Give {MIN_PHOTOS} to {MAX_PHOTOS} photos of the same person, not {len(self.photos)}.")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("Write a prompt: what should the person do, and where?")
        check_number("Identity strength", self.identity_strength, 0.0, MAX_IDENTITY_STRENGTH)
        check_int("Frames", self.num_frames, MIN_FRAMES, MAX_FRAMES)
        check_sampling(self.steps, self.guidance, self.seed, self.width, self.height)


@dataclass
class ReferenceFaces:
    crops: list[np.ndarray]       # (224, 224, 3) uint8 aligned crops: what the image encoder sees
    embeddings: list[np.ndarray]  # face descriptors, for the identity report
    notes: list[str]              # several faces in a photo, photos that look like different people


@dataclass
class IdentityResult:
    frames: np.ndarray            # (T, H, W, 3) uint8
    seed: int
    fps: int
    faces: ReferenceFaces
    face_similarity: list[float | None]   # per frame; None where no face was found
    timings: dict[str, float]
    prompt_tokens: int
    warnings: list[str] = field(default_factory=list)
    safety: dict = field(default_factory=lambda: {"enabled": False})   # what the guard flagged and did
    mode: str = "quality"

    @property
    def mean_similarity(self) -> float | None:
        found = [s for s in self.face_similarity if s is not None]
        return round(float(np.mean(found)), 4) if found else None


class IdentityPipeline:
    def __init__(self, cache: ModelCache, registry: Registry, faces: FaceAnalyzer | None = None,
                 guard: SafetyGuard | None = None):
        self.cache, self.registry, self.faces = cache, registry, faces or FaceAnalyzer()
        self.guard = guard or SafetyGuard()

    def reference_faces(self, photos) -> ReferenceFaces:
        """Find, align and check the face in every photo. Raises InputError with the photo's number."""
        crops, embeddings, notes = [], [], []
        for number, photo in enumerate(photos, start=1):
            face, photo_notes = self.faces.photo_face(load_photo(photo, number), number)
            crops.append(face.crop)
            embeddings.append(face.embedding)
            notes += photo_notes
        return ReferenceFaces(crops, embeddings, notes + identity_warnings(embeddings))

    @staticmethod
    def prompts(request: IdentityRequest) -> tuple[str, str]:
        """(prompt, negative prompt) as the model reads them: the user's text with the original's suffixes (and
        the concepts to suppress after the negative one, when the guard is asked to)."""
        negative = with_concepts(with_suffix(request.negative_prompt, NEGATIVE_SUFFIX), request.safety)
        return with_suffix(request.prompt, PROMPT_SUFFIX), negative

    def __call__(self, request: IdentityRequest, progress: Progress = noop,
                 faces: ReferenceFaces | None = None, measure_identity: bool = True,
                 preview: Preview | None = None) -> IdentityResult:
        """`faces`: the result of `reference_faces(request.photos)` when the caller already checked them.
        `measure_identity=False` leaves `face_similarity` empty for the caller to fill with `identity_report`
        (the studio runs that CPU work after the GPU call, not inside ZeroGPU's paid window).
        `preview`: called with a glimpse of the clip every few steps (pipelines/common.LivePreview)."""
        request.validate()
        mode = request.run_mode
        tiny_decoder = mode.tiny_decoder or preview is not None
        lightning = request.steps if mode.fast else None
        timings: dict[str, float] = {}
        if faces is None:
            progress(0.0, "Finding faces")
            start = time.perf_counter()
            faces = self.reference_faces(request.photos)
            timings["faces"] = time.perf_counter() - start

        models = identity_models(self.registry, lightning)
        needed = [models.tokenizer, models.text_encoder, models.vae, models.unet, models.image_encoder,
                  models.image_processor, *([models.tiny_vae] if tiny_decoder else [])]
        if not self.cache.holds(*needed):
            ensure_identity_available(self.registry, fast=mode.fast, steps=lightning, tiny_decoder=tiny_decoder)
        progress(0.0, "Loading models")
        start = time.perf_counter()
        with self.cache.use(*needed) as (tok, te, vae, unet, image_encoder, processor, *tiny):
            timings["load"] = time.perf_counter() - start
            prompt, negative = self.prompts(request)
            checked = {"The prompt (with the quality suffix)": prompt}
            if request.negative_prompt != AUTHORS_NEGATIVE:       # the default's overflow is said in the UI
                checked["The negative prompt (with its suffix)"] = negative
            counts, warnings = prompt_warnings(tok, checked)

            start = time.perf_counter()
            face_embeds = self._face_embeds(image_encoder, processor, faces.crops, uses_cfg(request.guidance))
            timings["encode_faces"] = time.perf_counter() - start

            plan = None
            if request.safety is not None:
                start = time.perf_counter()
                plan = self.guard.plan(tok, te, [prompt], request.safety, request.steps)
                timings["safety_prompt"] = time.perf_counter() - start

            pipe = animatediff(vae, te, tok, unet, models.scheduler_config, models.scheduler)
            live = LivePreview(pipe, tiny[0], preview) if preview is not None else None
            pipe.set_ip_adapter_scale(float(request.identity_strength))   # per call: the UNet is ours while locked

            with timed_sampling(pipe, timings, request.steps), self.guard.applied(pipe, plan):
                latents = pipe(
                    prompt=prompt, negative_prompt=negative, num_frames=request.num_frames,
                    height=request.height, width=request.width, num_inference_steps=request.steps,
                    guidance_scale=request.guidance, ip_adapter_image_embeds=[face_embeds],
                    generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent",
                    callback_on_step_end=step_reporter(progress, request.steps, live),
                ).frames
            if live is not None:
                timings["preview"] = live.spent

            progress(1.0, "Decoding frames")
            start = time.perf_counter()
            frames = decode_frames(pipe, latents, chunk=request.num_frames,
                                   vae=tiny[0] if mode.tiny_decoder else None)
            timings["decode"] = time.perf_counter() - start

        similarity: list[float | None] = []
        if measure_identity:
            progress(1.0, "Measuring identity")
            start = time.perf_counter()
            similarity = self.identity_report(frames, faces.embeddings)
            timings["identity_report"] = time.perf_counter() - start
        return IdentityResult(
            frames=frames, seed=request.seed, fps=FPS, faces=faces, face_similarity=similarity,
            timings={k: round(v, 3) for k, v in timings.items()},
            prompt_tokens=counts["The prompt (with the quality suffix)"],
            warnings=faces.notes + warnings, safety=plan.report() if plan is not None else {"enabled": False},
            mode=mode.name,
        )

    @staticmethod
    @torch.inference_mode()
    def _face_embeds(image_encoder, processor, crops: list[np.ndarray], guided: bool) -> torch.Tensor:
        """The photos' penultimate hidden states, in the layout diffusers' `ip_adapter_image_embeds` expects.

        With guidance (`guided`): (2, photos, tokens, width), the unconditional branch (the encoder's output
        for an all-zero image, as IP-Adapter-Plus and ID-Animator use) stacked on the conditional one;
        diffusers splits it in two. Without (guidance <= 1, distilled few-step modes): (1, photos, tokens, width),
        the conditional branch only. diffusers does not split it then, so a stacked pair would double the face
        batch and its frame reshaping would hand half the frames the blank face.
        """
        pixels = processor(images=crops, return_tensors="pt").pixel_values
        pixels = pixels.to(device=image_encoder.device, dtype=image_encoder.dtype)
        cond = image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
        if not guided:
            return cond[None]
        uncond = image_encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        return torch.stack([uncond, cond])

    def identity_report(self, frames: np.ndarray, references: list[np.ndarray]) -> list[float | None]:
        """Per frame: similarity of the largest face to the reference identity (mean descriptor), or None."""
        reference = np.mean(references, axis=0)
        report = []
        for frame in frames:
            embedding = self.faces.frame_embedding(frame)
            report.append(None if embedding is None else round(face_similarity(embedding, reference), 4))
        return report


def with_suffix(text: str | None, suffix: str) -> str:
    """`text + " " + suffix`, as ID-Animator joins them (an empty text gives the suffix alone)."""
    text = (text or "").strip()
    return f"{text} {suffix}" if text else suffix
