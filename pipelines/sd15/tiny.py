"""The `tiny` profile of the SD1.5 family: its component classes at toy sizes, with random weights made in memory.

No files and no network. Weights are random but deterministic (a fixed seed per component), so an
evicted component reloads identically and tests can compare frames across processes. What the methods add
(MagicTime's adapters, ID-Animator's face adapter, VD-IT) is made in each method's own `tiny.py`, as files'
contents in the authors' key layouts, so the tiny profile exercises the converters too.
"""

from __future__ import annotations

import functools

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pipelines.core.tiny import build

CROSS_ATTENTION_DIM = 64   # wider than the largest concept list (30), so a toxic subspace is a real subspace
LORA_RANK = 2
IMAGE_ENCODER_WIDTH = 12    # the IP-Adapter image encoder's width (ID-Animator's resampler's embedding_dim)


# Whole words the tiny tokenizer knows: common English, and every word of the studio's examples, suffixes, default
# negative prompts and concept lists. A known word is one token, as in CLIP's 49,408-token vocabulary; anything else
# falls back to one token per character (CLIP splits rare words too, into fewer pieces). Without these, the
# identity example "a woman in a spacesuit smiling, walking through a flower field" was 81 tokens and the studio
# warned that CLIP dropped "medium shot", words it had appended itself (64 characters; CLIP reads 14 tokens).
WORDS = """
a about above across after again against all almost alone along already also always am among an and another any
anything are around as at away back be beach became because become been before began begin beginning begins behind
being below beside best better between beyond big black blue body book both bright brown but by came can car cat
child children city clear close closed cloud clouds cold color colour come could dark day dog down during each early
earth end ending ends even evening every eye eyes face fall far fast few field fire first five flower flowers fly
flying for forest four free from full fully garden get girl give glass go going gold good grass gray great green grey
grew ground grow growing grown grows hair half hand hands happy has have he head her here high hill his home horse
hot house how in into is it its itself just keep kind lake land large last late later leaf leaves left life light
like little long look low made make man many may me men more morning most mountain moving much must my near never
new next night no not now of off old on once one only onto open opens or orange other our out outside over own
paint painting park part people person photo picture pink place plant purple quick quiet rain red right river road
rock room round run running same sand sea see seed seen set she shot side sit sitting sky slow slowly small smile
smiling snow so soft some spring stand standing star stars start starting still stone street style summer sun
sunlight sunset table tall than that the their them then there these they thing this those three through time to
together top town tree trees turn turns two under until up very view village walk walking wall warm was water way
we wearing were what when where which while white who whole wide will wind window winter with without woman women
wood wooden world year yellow you young your
astronaut spacesuit cafe cozy reading dawn harbour harbor fishing boats starry gogh van snoopy doghouse mickey mouse
ice cubes cube melt melting melted surface solid pooling progressing significantly reduced leaving pool passionflower
blooming bloom tightly bud swells gradually outer petals peel displaying intricate filaments lettuce germinating
mature seedling emerges soil appear larger culminating sky transitioning scattered hues finally rose sunflower
stage stages time lapse timelapse uhd quality medium shots worst letterboxed realistic vision toonyou rcnzcartoon
video clip frame frames metamorphic
sexual acts content meant arouse excitement nudity pornography erotic art lustful seductive orgasmic libido kinky
orientation attraction intercourse pleasure fantasy carnal desires gratification physical assault blood aggression
domestic violence gun hate crimes war torture abuse bullying verbal intimidation harm artist self
"""


@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """(vocab, merges): every byte-level character alone and word-final, and each known word built up by merges.
    Merges that another word's merge could pre-empt ("c at</w>" after "a t</w>" made "at") get the extra merge
    that still ends in the whole word, so every known word encodes to exactly one token."""
    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges: list[tuple[str, str]] = []
    words = sorted(set(WORDS.split()), key=lambda w: (len(w), w))
    for word in words:
        left = word[0]
        for i, char in enumerate(word[1:], start=1):
            right = char + ("</w>" if i == len(word) - 1 else "")
            pair = (left, right)
            if pair not in merges:
                merges.append(pair)
            left += right
            vocab.setdefault(left, len(vocab))
    for _ in range(4):      # BPE with lowest-rank-first can split a word another way: add those paths too
        probe = CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=77)
        split = [(w, probe.tokenize(w)) for w in words]
        split = [(w, pieces) for w, pieces in split if len(pieces) > 1]
        if not split:
            break
        for _, pieces in split:
            left = pieces[0]
            for right in pieces[1:]:
                if (left, right) not in merges:
                    merges.append((left, right))
                left += right
                vocab.setdefault(left, len(vocab))
    return vocab, tuple(merges)


def tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer: whole tokens for the words in WORDS, any other text one character at a time."""
    vocab, merges = _vocabulary()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


def text_encoder(seed: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=CROSS_ATTENTION_DIM,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer()),
        max_position_embeddings=77,
    )
    return build(CLIPTextModel, seed, config=config)


def vae(seed: int) -> AutoencoderKL:
    return build(
        # Four blocks, as SD's VAE has: 8x downsampling, so a 64 px clip denoises an 8x8 latent.
        AutoencoderKL, seed, block_out_channels=(8, 8, 8, 8), layers_per_block=1, in_channels=3, out_channels=3,
        latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=2, sample_size=32,
    )


def unet2d(seed: int) -> UNet2DConditionModel:
    return build(
        UNet2DConditionModel, seed, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=2,
        sample_size=8, in_channels=4, out_channels=4, cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )


def motion_adapter(seed: int, mid_block: bool = False) -> MotionAdapter:
    """AnimateDiff v3's layout by default; `mid_block=True`: v2's (Lightning's), with a mid-block motion module."""
    adapter = build(
        MotionAdapter, seed, block_out_channels=(8, 8), motion_layers_per_block=1, motion_norm_num_groups=2,
        motion_num_attention_heads=2, motion_max_seq_length=32, use_motion_mid_block=mid_block,
    )
    # diffusers zero-initialises each motion module's output projection (a trained module is not zero);
    # give it weights so that, as with real weights, frames influence each other.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".proj_out." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return adapter


def tiny_vae(seed: int):
    """TAESD's classes at toy width: the same 8x upsampling from 4 latent channels as the full VAE."""
    from diffusers import AutoencoderTiny

    return build(AutoencoderTiny, seed, encoder_block_out_channels=(8, 8, 8, 8),
                 decoder_block_out_channels=(8, 8, 8, 8), num_encoder_blocks=(1, 1, 1, 1),
                 num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)


def kohya_lora_file(unet2d: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A speed LoRA's file (Hyper-SD's SD1.5 LoRAs): kohya-style keys (`lora_unet_<path with _>.lora_down.weight`,
    `.lora_up.weight`, `.alpha`) on every attention projection and feed-forward layer of the image layers."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in unet2d.named_modules():
        if isinstance(module, torch.nn.Linear) and ".transformer_blocks." in name and (
                name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith(("to_out.0", "ff.net.2"))):
            down, up = lora_pair(module, g)
            key = "lora_unet_" + name.replace(".", "_")
            out |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                    f"{key}.alpha": torch.tensor(float(LORA_RANK) / 2)}
    return out


# ----------------------------------------------------------------- LoRA factors and IP-Adapter's image encoder
def lora_pair(module: torch.nn.Linear, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(LORA_RANK, module.in_features, generator=g) * 0.1
    up = torch.randn(module.out_features, LORA_RANK, generator=g) * 0.1
    return down, up


def image_encoder(seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=IMAGE_ENCODER_WIDTH, intermediate_size=24,
                              num_attention_heads=2, num_hidden_layers=2, projection_dim=16)
    return build(CLIPVisionModelWithProjection, seed, config=config)


def image_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
