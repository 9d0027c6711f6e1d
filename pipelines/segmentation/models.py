"""What the referring-segmentation tab loads: text grounders and SAM 2 video trackers, for each profile.

They share nothing with the SD-family components of pipelines/sd15/models.py, so they are described here, but they
load through the same model cache (keys say profile, hub id, dtype). Processors are built without torchvision
(transformers' SAM 2 and fast image processors import it; PyPI's torchvision breaks the CPU torch): Grounding DINO
gets its PIL image processor, and SAM 2's preprocessing is done in pipelines/segmentation/pipeline.py.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import torch

from pipelines.core import tiny as core_tiny
from pipelines.core.cache import Component
from pipelines.core.hub import HubFile, ensure_available, hub_folder
from pipelines.sd15 import tiny
from pipelines.segmentation.vdit import tiny as vdit_tiny
from pipelines.segmentation.vdit.model import SHORT_SIDE

# Drop-in grounders with Grounding DINO's API (reference/segmentation.md).
GROUNDERS = {
    "Grounding DINO tiny": "IDEA-Research/grounding-dino-tiny",
    "MM-Grounding-DINO tiny": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
    "LLMDet tiny": "iSEE-Laboratory/llmdet_tiny",
    # Florence-2 (MIT), transformers-native weights: the ids transformers' own docstrings load (Florence2Config's
    # checkpoint "florence-community/Florence-2-base"; Florence2ForConditionalGeneration's example, "-large"). Not a
    # drop-in: it reads the whole referring expression (trained on RefCOCO-style ones) and generates its boxes.
    "Florence-2 base": "florence-community/Florence-2-base",
    "Florence-2 large": "florence-community/Florence-2-large",
}
# Grounders that read a whole referring expression ("the dog closest to the camera") rather than a noun phrase; the
# studio hands them what its relation rules do not read. The large one when the studio picks (better on RefCOCO).
EXPRESSION_GROUNDERS = ("Florence-2 base", "Florence-2 large")
WHOLE_EXPRESSION_GROUNDER = "Florence-2 large"
# The transformers class each grounder's weights load as (AutoModelForZeroShotObjectDetection picks it from the
# repository's config.json: model_type "grounding-dino" or "mm-grounding-dino"; LLMDet's checkpoints are MM Grounding
# DINO's architecture). The tiny profile builds the same class for each name.
GROUNDER_CLASSES = {
    "Grounding DINO tiny": "GroundingDinoForObjectDetection",
    "MM-Grounding-DINO tiny": "MMGroundingDinoForObjectDetection",
    "LLMDet tiny": "MMGroundingDinoForObjectDetection",
    "Florence-2 base": "Florence2ForConditionalGeneration",
    "Florence-2 large": "Florence2ForConditionalGeneration",
}
# What from_pretrained reads of a grounder repository (IDEA-Research/grounding-dino-tiny's layout): the model,
# the image processor's config and the fast tokenizer.
GROUNDER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json",
                  "tokenizer.json")
# Florence-2 in transformers' own layout, as Florence2ForConditionalGeneration and Florence2Processor's
# save_pretrained write it (transformers 5.24): the image processor's settings and the output parser's rules live in
# processor_config.json. The florence-community repositories' listing could not be seen from here.
FLORENCE_FILES = ("config.json", "generation_config.json", "model.safetensors", "processor_config.json",
                  "tokenizer.json", "tokenizer_config.json")


def grounder_files(name: str) -> tuple[str, ...]:
    return FLORENCE_FILES if name in EXPRESSION_GROUNDERS else GROUNDER_FILES
TRACKERS = {
    "SAM 2.1 tiny": "facebook/sam2.1-hiera-tiny",
    "SAM 2.1 small": "facebook/sam2.1-hiera-small",
    "SAM 2.1 base-plus": "facebook/sam2.1-hiera-base-plus",
    "SAM 2.1 large": "facebook/sam2.1-hiera-large",
}
TRACKER_FILES = ("config.json", "model.safetensors")
DEFAULT_GROUNDER, DEFAULT_TRACKER = "Grounding DINO tiny", "SAM 2.1 tiny"

# ----------------------------------------------------------------- VD-IT's models (reference/vdit.md section 6)
BACKENDS = ("grounding", "vdit")
# The trained head: buxiangzhiren/VD-IT. Its file list could not be seen from here (no hub access, and the spec
# records it as unseen), so the file is found rather than assumed (`vdit_checkpoint`): STUDIO_VDIT_CHECKPOINT if set,
# else the one weight file the repository holds (in the local cache, or listed by the hub), else this name.
VDIT_REPO = "buxiangzhiren/VD-IT"
VDIT_CHECKPOINT = "checkpoint.pth"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
# The frozen backbone: ModelScope's text-to-video model in diffusers' layout (fp16 files: half the download; the
# UNet's 2.82 GB fp16 safetensors is on the hub page), laion's CLIP ViT-H/14 and RoBERTa-base.
MODELSCOPE = "ali-vilab/text-to-video-ms-1.7b"          # CC-BY-NC-4.0: non-commercial use only
MODELSCOPE_FILES = (
    "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
)
# Not shared with the identity tab's image encoder (h94/IP-Adapter models/image_encoder): that one is a conversion of
# the same OpenCLIP model, but nothing here can show the two files hold the same weights, so they stay two entries.
CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_H_FILES = ("config.json", "model.safetensors")
ROBERTA = "FacebookAI/roberta-base"
ROBERTA_FILES = ("config.json", "model.safetensors", "merges.txt", "vocab.json", "tokenizer.json")
VDIT_LICENCE = ("VD-IT's code is Apache-2.0, but its frozen backbone, ModelScope's text-to-video model "
                "(ali-vilab/text-to-video-ms-1.7b), is CC-BY-NC-4.0: non-commercial use only.")


@dataclass(frozen=True)
class VDITComponents:
    unet: Component
    vae: Component
    text_encoder: Component
    tokenizer: Component
    vision: Component
    vision_processor: Component
    roberta: Component
    roberta_tokenizer: Component
    trained: Component
    short_side: int = SHORT_SIDE       # frames' short side (the paper's; the tiny profile's models take less)

    def all(self) -> tuple[Component, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "short_side")

    def models(self, loaded: tuple):
        """The loaded objects of `all()`, in that order, as the VDITModels segment_clip takes."""
        from pipelines.segmentation.vdit.model import VDITModels

        names = [f.name for f in fields(self) if f.name != "short_side"]
        return VDITModels(**dict(zip(names, loaded, strict=True)), short_side=self.short_side)
TINY_TRACKER_SIZE = 128


@dataclass(frozen=True)
class SegmentationModels:
    grounder: Component          # the detection model (placed on the device by the cache)
    grounder_processor: Component
    tracker: Component           # Sam2VideoModel (its config's image_size is the square it takes)


class SegmentationRegistry:
    def __init__(self, profile: str = "real", dtype: str = "float32"):
        self.profile, self.dtype_name = profile, dtype
        self._checkpoint: str | None = None
        self.dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]

    def models(self, grounder: str = DEFAULT_GROUNDER, tracker: str = DEFAULT_TRACKER) -> SegmentationModels:
        if grounder not in GROUNDERS:
            raise ValueError(f"Unknown grounder {grounder!r}; choose one of: {', '.join(GROUNDERS)}")
        if tracker not in TRACKERS:
            raise ValueError(f"Unknown tracker {tracker!r}; choose one of: {', '.join(TRACKERS)}")
        if self.profile == "tiny":
            return SegmentationModels(
                grounder=Component(f"tiny|grounder|{GROUNDERS[grounder]}|float32",
                                   partial(_tiny_grounder_model, grounder)),
                grounder_processor=Component(f"tiny|grounder-processor|{GROUNDERS[grounder]}",
                                             partial(_tiny_grounder_processor, grounder)),
                tracker=Component(f"tiny|sam2-video|{TRACKERS[tracker]}|float32", partial(_tiny_tracker, tracker)),
            )
        # The grounder stays float32: its box scores are thresholded, and it runs on a few frames only.
        return SegmentationModels(
            grounder=Component(f"real|grounder|{GROUNDERS[grounder]}|float32", partial(_real_grounder_model, grounder)),
            grounder_processor=Component(f"real|grounder-processor|{GROUNDERS[grounder]}",
                                         partial(_real_grounder_processor, grounder)),
            tracker=Component(f"real|sam2-video|{TRACKERS[tracker]}|{self.dtype_name}",
                              partial(_real_tracker, tracker, self.dtype)),
        )

    def vdit(self) -> VDITComponents:
        """VD-IT's models, each its own cache entry (the frozen ones in the registry's dtype, the trained head in
        float32: its deformable sampling runs in fp32 in the original too)."""
        p, d = self.profile, self.dtype_name
        if p == "tiny":
            loaders = dict(unet=vdit_tiny.vdit_unet, vae=vdit_tiny.vdit_vae,
                           text_encoder=lambda: tiny.text_encoder(core_tiny.seed_of("vdit-clip", "0")).eval(),
                           tokenizer=tiny.tokenizer,
                           vision=lambda: tiny.image_encoder(core_tiny.seed_of("vdit-vision", "0")).eval(),
                           vision_processor=vdit_tiny.vdit_vision_processor, roberta=vdit_tiny.vdit_roberta,
                           roberta_tokenizer=vdit_tiny.roberta_tokenizer, trained=vdit_tiny.vdit_trained)
        else:
            loaders = dict(unet=partial(_modelscope, "UNet3DConditionModel", "unet", self.dtype),
                           vae=partial(_modelscope, "AutoencoderKL", "vae", self.dtype),
                           text_encoder=partial(_modelscope, "CLIPTextModel", "text_encoder", self.dtype),
                           tokenizer=partial(_modelscope, "CLIPTokenizer", "tokenizer", None),
                           vision=partial(_clip_h, self.dtype), vision_processor=_clip_h_processor,
                           roberta=partial(_roberta, self.dtype), roberta_tokenizer=_roberta_tokenizer,
                           trained=_vdit_trained)
        key = {"unet": f"{p}|vdit-unet3d|{MODELSCOPE}|{d}", "vae": f"{p}|vdit-vae|{MODELSCOPE}|{d}",
               "text_encoder": f"{p}|vdit-clip-text|{MODELSCOPE}|{d}",
               "tokenizer": f"{p}|vdit-tokenizer|{MODELSCOPE}", "vision": f"{p}|vdit-clip-vision|{CLIP_H}|{d}",
               "vision_processor": f"{p}|vdit-clip-processor|{CLIP_H}", "roberta": f"{p}|vdit-roberta|{ROBERTA}|{d}",
               "roberta_tokenizer": f"{p}|vdit-roberta-tokenizer|{ROBERTA}",
               "trained": f"{p}|vdit-head|{VDIT_REPO}/{self._vdit_checkpoint()}|float32"}
        return VDITComponents(**{name: Component(key[name], load) for name, load in loaders.items()},
                              short_side=vdit_tiny.VDIT_SHORT_SIDE if p == "tiny" else SHORT_SIDE)

    def _vdit_checkpoint(self) -> str:
        """The checkpoint's name, found once per registry: later look-ups may find the snapshot's blobs pruned (on
        ZeroGPU, once packed for the GPU) and ask the hub from inside a GPU call."""
        if self.profile != "real":
            return VDIT_CHECKPOINT
        if self._checkpoint is None:
            self._checkpoint = vdit_checkpoint()
        return self._checkpoint

    def ensure_available(self, grounder: str, tracker: str, backend: str = "grounding") -> None:
        if self.profile == "real":
            ensure_available(self.vdit_downloads() if backend == "vdit" else self.downloads(grounder, tracker))

    @staticmethod
    def vdit_downloads() -> list[HubFile]:
        """Every hub file the VD-IT backend reads (`python -m studio download --tab vdit`)."""
        return ([HubFile(VDIT_REPO, vdit_checkpoint())] + [HubFile(MODELSCOPE, f) for f in MODELSCOPE_FILES]
                + [HubFile(CLIP_H, f) for f in CLIP_H_FILES] + [HubFile(ROBERTA, f) for f in ROBERTA_FILES])

    def default_downloads(self) -> list[HubFile]:
        """What the tab's defaults can reach: the default grounder and tracker, and the whole-expression grounder
        the studio hands the words its rules do not read (`python -m studio download`, Spaces' preload)."""
        return self.downloads(DEFAULT_GROUNDER, DEFAULT_TRACKER) + [
            HubFile(GROUNDERS[WHOLE_EXPRESSION_GROUNDER], f) for f in grounder_files(WHOLE_EXPRESSION_GROUNDER)]

    def downloads(self, grounder: str | None = None, tracker: str | None = None) -> list[HubFile]:
        """Hub files for the chosen models (all of them when not given: `python -m studio download`)."""
        trackers = [TRACKERS[tracker]] if tracker else list(TRACKERS.values())
        names = [grounder] if grounder else list(GROUNDERS)
        return ([HubFile(GROUNDERS[name], f) for name in names for f in grounder_files(name)]
                + [HubFile(repo, f) for repo in trackers for f in TRACKER_FILES])


# ----------------------------------------------------------------------------- real: hub weights
def _real_grounder_model(name: str):
    from transformers import AutoModelForZeroShotObjectDetection, Florence2ForConditionalGeneration

    folder = hub_folder(GROUNDERS[name], grounder_files(name))
    if name in EXPRESSION_GROUNDERS:
        return Florence2ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return AutoModelForZeroShotObjectDetection.from_pretrained(folder, dtype=torch.float32).eval()


def _real_grounder_processor(name: str):
    from transformers import AutoProcessor, AutoTokenizer, GroundingDinoProcessor
    from transformers.models.grounding_dino import GroundingDinoImageProcessorPil

    folder = hub_folder(GROUNDERS[name], grounder_files(name))
    if name in EXPRESSION_GROUNDERS:          # its image processor resolves to CLIPImageProcessorPil: no torchvision
        return AutoProcessor.from_pretrained(folder)
    return GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil.from_pretrained(folder),
                                  tokenizer=AutoTokenizer.from_pretrained(folder))


def _real_tracker(name: str, dtype: torch.dtype):
    from transformers import Sam2VideoModel

    folder = hub_folder(TRACKERS[name], TRACKER_FILES)
    return Sam2VideoModel.from_pretrained(folder, dtype=dtype).eval()


def vdit_checkpoint() -> str:
    """The checkpoint's file name in buxiangzhiren/VD-IT: STUDIO_VDIT_CHECKPOINT, else the repository's one weight
    file (cached, or as the hub lists it), else VDIT_CHECKPOINT. Several weight files and no setting: an error that
    names them, as the studio cannot tell which is the released model."""
    from huggingface_hub import constants

    from pipelines.core.errors import WeightsError
    from pipelines.core.hub import _offline, hub_reachable

    chosen = os.environ.get("STUDIO_VDIT_CHECKPOINT", "").strip()
    if chosen:
        return chosen
    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{VDIT_REPO.replace('/', '--')}" / "snapshots"
    names = sorted({p.relative_to(snap).as_posix() for snap in snapshots.glob("*") for p in snap.rglob("*")
                    if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)}) if snapshots.is_dir() else []
    if not names and not _offline() and hub_reachable():
        names = _listed_weight_files()
    if len(names) > 1:
        raise WeightsError(f"{VDIT_REPO} holds several weight files ({', '.join(names)}); say which is the "
                           "checkpoint with STUDIO_VDIT_CHECKPOINT.")
    return names[0] if names else VDIT_CHECKPOINT


@functools.lru_cache(maxsize=1)
def _listed_weight_files() -> list[str]:
    """The weight files the hub lists for VD-IT's repository (asked once per process)."""
    from huggingface_hub import HfApi

    try:
        return sorted(n for n in HfApi().list_repo_files(VDIT_REPO) if n.endswith(WEIGHT_SUFFIXES))
    except Exception:                      # the listing is a convenience: fall back to the default name
        return []


def _modelscope(cls_name: str, subfolder: str, dtype):
    """One part of ModelScope's pipeline folder, from its fp16 files (cast to `dtype`); the tokenizer as it is."""
    import diffusers
    import transformers

    folder = hub_folder(MODELSCOPE, MODELSCOPE_FILES) / subfolder
    if cls_name == "CLIPTokenizer":
        return transformers.CLIPTokenizer.from_pretrained(folder)
    if cls_name == "CLIPTextModel":
        return transformers.CLIPTextModel.from_pretrained(folder, variant="fp16", dtype=dtype).eval()
    return getattr(diffusers, cls_name).from_pretrained(folder, variant="fp16", torch_dtype=dtype).eval()


def _clip_h(dtype):
    from transformers import CLIPVisionModel

    # CLIPVisionModel reads the vision tower out of the full CLIP checkpoint; its last_hidden_state is what VD-IT
    # uses (before post_layernorm, no projection: section 2.2).
    return CLIPVisionModel.from_pretrained(hub_folder(CLIP_H, CLIP_H_FILES), dtype=dtype).eval()


def _clip_h_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil()          # short side 224 bicubic, centre crop 224, CLIP's mean and std


def _roberta(dtype):
    from transformers import RobertaModel

    return RobertaModel.from_pretrained(hub_folder(ROBERTA, ROBERTA_FILES), dtype=dtype).eval()


def _roberta_tokenizer():
    from transformers import RobertaTokenizer

    return RobertaTokenizer.from_pretrained(hub_folder(ROBERTA, ROBERTA_FILES))


def _vdit_trained(config=None, check_frozen: bool = True):
    """VD-IT's trained parts from the released checkpoint (`config`: the released sizes unless given). Frozen weights
    the file may also hold are checked against the stock models' own keys (`check_frozen`; built on the meta
    device from the hub configs, so nothing is allocated)."""
    from pipelines.segmentation.vdit import model as vdit
    from pipelines.segmentation.vdit.convert import vdit_state_dict

    model = vdit.VDIT(config)
    checkpoint = torch.load(HubFile(VDIT_REPO, vdit_checkpoint()).path(), map_location="cpu", weights_only=True)
    frozen = _frozen_keys() if check_frozen else None
    model.load_state_dict(vdit_state_dict(checkpoint, model, frozen), strict=True)
    return model.eval()


def _frozen_keys() -> dict[str, set[str]]:
    """The state-dict keys of the stock frozen models, per checkpoint prefix (reference/vdit.md section 5)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        RobertaConfig,
        RobertaModel,
    )

    folder = hub_folder(MODELSCOPE, MODELSCOPE_FILES)
    with torch.device("meta"):
        models = {
            "unet.": UNet3DConditionModel.from_config(UNet3DConditionModel.load_config(folder / "unet")),
            "vae.": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder.": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
            "cv_model.": CLIPVisionModelWithProjection(
                CLIPVisionConfig.from_pretrained(hub_folder(CLIP_H, CLIP_H_FILES))),
        }
        roberta = RobertaModel(RobertaConfig.from_pretrained(hub_folder(ROBERTA, ROBERTA_FILES)))
    keys = {f"backbone.0.diff_ftex.{prefix}": set(m.state_dict()) for prefix, m in models.items()}
    keys["text_encoder.text_backbone."] = set(roberta.state_dict())
    return keys


# ----------------------------------------------------------------------------- tiny: random, same classes
GROUNDING_VOCAB_SPECIAL = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def grounding_tokenizer():
    """A BERT WordPiece tokenizer built in memory: the special ids Grounding DINO hard-codes ([CLS] 101, [SEP] 102,
    '.' 1012, '?' 1029) where BERT has them, and every lower-case letter and digit as a word piece."""
    from transformers import BertTokenizer

    vocab = dict(GROUNDING_VOCAB_SPECIAL)
    free = (i for i in range(1, 2000) if i not in vocab.values())
    characters = "abcdefghijklmnopqrstuvwxyz0123456789"
    for piece in [*characters, *",'-", *(f"##{c}" for c in characters)]:
        vocab[piece] = next(free)
    return BertTokenizer(vocab=vocab, do_lower_case=True)


# Florence-2's output parser's rules for the two tasks the studio runs (the real ones come in processor_config.json).
FLORENCE_PARSE_RULES = {"description_with_bboxes_or_polygons": {}, "phrase_grounding": {"banned_grounding_tokens": []}}
TINY_FLORENCE_SIDE = 64


def florence_tokenizer():
    """A byte-level BART tokenizer with the bytes as its vocabulary, Florence-2's image token and its 1000 location
    tokens (<loc_0> .. <loc_999>) and task tags: what its processor and output parser need."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import BartTokenizer

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *sorted(ByteLevel.alphabet())])}
    tokenizer = BartTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_tokens([f"<loc_{i}>" for i in range(1000)] + ["<od>", "</od>", "<poly>", "</poly>", "<sep>"])
    return tokenizer


def _tiny_florence_processor():
    from transformers import CLIPImageProcessorPil, Florence2Processor

    image_processor = CLIPImageProcessorPil(
        size={"height": TINY_FLORENCE_SIDE, "width": TINY_FLORENCE_SIDE}, do_center_crop=False, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    image_processor.image_seq_length = 5     # the tiny vision tower's tokens: 2 x 2 patches + 1 pooled
    return Florence2Processor(image_processor=image_processor, tokenizer=florence_tokenizer(),
                              post_processor_config=FLORENCE_PARSE_RULES)


def _tiny_florence_model(name: str):
    from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration, Florence2VisionConfig

    tokenizer = florence_tokenizer()
    vision = Florence2VisionConfig(depths=(1, 1, 1, 1), embed_dim=(8, 16, 32, 32), num_heads=(1, 1, 2, 2),
                                   num_groups=(1, 1, 2, 2), window_size=2, projection_dim=32, max_position_embeddings=16)
    text = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                      max_position_embeddings=320, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                      decoder_start_token_id=2, forced_bos_token_id=0)
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
    return core_tiny.build(Florence2ForConditionalGeneration, core_tiny.seed_of("grounder", name), config=config).eval()


def _tiny_grounder_processor(name: str = DEFAULT_GROUNDER):
    if name in EXPRESSION_GROUNDERS:
        return _tiny_florence_processor()
    from transformers import GroundingDinoProcessor
    from transformers.models.grounding_dino import GroundingDinoImageProcessorPil

    return GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 96, "longest_edge": 160}),
        tokenizer=grounding_tokenizer())


def _tiny_grounder_model(name: str):
    """The grounder's own class (GROUNDER_CLASSES) at toy sizes: Grounding DINO, or MM Grounding DINO for
    MM-Grounding-DINO and LLMDet (same API; MM's decoder shares no class or box heads across layers)."""
    import transformers
    from transformers import SwinConfig

    if name in EXPRESSION_GROUNDERS:
        return _tiny_florence_model(name)
    cls = getattr(transformers, GROUNDER_CLASSES[name])
    # MM Grounding DINO's released configs untie the decoder's per-layer class and box heads (Grounding DINO ties).
    unshared = (dict(decoder_bbox_embed_share=False, decoder_cls_embed_share=False)
                if cls.__name__.startswith("MM") else {})
    tokenizer = grounding_tokenizer()
    backbone = SwinConfig(window_size=7, embed_dim=8, depths=[1] * 4, num_heads=[1] * 4, image_size=98,
                          out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4])
    config = cls.config_class(
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=20, num_feature_levels=4, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32, backbone_config=backbone,
        text_config=dict(model_type="bert", hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8, max_position_embeddings=32,
                         vocab_size=max(tokenizer.get_vocab().values()) + 1),
        **unshared,
    )
    return core_tiny.build(cls, core_tiny.seed_of("grounder", name), config=config).eval()


def _tiny_tracker(name: str):
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoModel, Sam2VisionConfig

    s = TINY_TRACKER_SIZE
    backbone = Sam2HieraDetConfig(hidden_size=8, image_size=[s, s], blocks_per_stage=[1, 1, 2, 1],
                                  embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
                                  window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[3],
                                  window_positional_embedding_background_size=[2, 2])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[s // 4] * 2, [s // 8] * 2, [s // 16] * 2], fpn_hidden_size=128)
    config = Sam2VideoConfig(
        vision_config=vision, image_size=s, prompt_encoder_config=dict(hidden_size=128, image_size=s, patch_size=16),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[s // 16] * 2, memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
    )
    return core_tiny.build(Sam2VideoModel, core_tiny.seed_of("sam2", name), config=config).eval()
