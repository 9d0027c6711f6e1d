"""VD-IT at toy size for the tiny profile: ModelScope's UNet3D and VAE, CLIP text and vision, RoBERTa, and the trained
parts, all random, sized to fit one another."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from pipelines.core.tiny import build, seed_of
from pipelines.sd15.tiny import CROSS_ATTENTION_DIM, IMAGE_ENCODER_WIDTH, image_encoder, text_encoder, tokenizer


def vdit_config():
    """VD-IT's trained parts at toy width, sized to the toy backbone below (taps: VAE 12; UNet 8 + 12, 8 + 16,
    12 + 16)."""
    from pipelines.segmentation.vdit.model import VDITConfig

    return VDITConfig(d_model=32, num_queries=3, layers=2, heads=4, points=2, ffn=64, text_hidden=24,
                      unet_text=CROSS_ATTENTION_DIM, vision_hidden=IMAGE_ENCODER_WIDTH, cross_heads=4,
                      cross_head_dim=8, cross_ffn=20, taps=((12, 8, 8), (20, 16, 16), (24, 16, 16), (28, 16, 32)),
                      group_norm=8)


VDIT_SHORT_SIDE = 64        # the tiny VD-IT's frames: the paper's 360 px would only make the toy models slow


def vdit_unet(seed: int = 0):
    from diffusers import UNet3DConditionModel

    return build(UNet3DConditionModel, seed_of("vdit-unet", str(seed)), block_out_channels=(8, 12, 16, 16),
                 layers_per_block=1, norm_num_groups=4, cross_attention_dim=CROSS_ATTENTION_DIM,
                 attention_head_dim=4, sample_size=8).eval()


def vdit_vae(seed: int = 0):
    """SD's VAE layout (two resnets per block: VD-IT taps the second of block 2) at toy width."""
    return build(AutoencoderKL, seed_of("vdit-vae", str(seed)), block_out_channels=(4, 8, 12, 12),
                 layers_per_block=2, latent_channels=4, norm_num_groups=2,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()


def _roberta_vocab() -> dict[str, int]:
    from tokenizers.pre_tokenizers import ByteLevel

    return {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *sorted(ByteLevel.alphabet())])}


def roberta_tokenizer():
    """RoBERTa's byte-level tokenizer with the bytes alone as its vocabulary (one token per byte)."""
    from transformers import RobertaTokenizer

    return RobertaTokenizer(vocab=_roberta_vocab(), merges=[])


def vdit_roberta(seed: int = 0):
    from transformers import RobertaConfig, RobertaModel

    return build(RobertaModel, seed_of("vdit-roberta", str(seed)), config=RobertaConfig(
        vocab_size=len(_roberta_vocab()), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=260, pad_token_id=1)).eval()


def vdit_vision_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def vdit_trained(seed: int = 0):
    from pipelines.segmentation.vdit import model as vdit

    trained = build(vdit.VDIT, seed_of("vdit-trained", str(seed)), config=vdit_config())
    with torch.no_grad():      # the zero-initialised tensors, given values as trained ones have
        g = torch.Generator().manual_seed(seed)
        for tensor in (trained.head.query_tensors, trained.head.level_embed):
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.5)
    return trained.eval()


def vdit_models(seed: int = 0):
    """Every model VD-IT needs, random and tiny: UNet3D, VAE, CLIP text, CLIP vision, RoBERTa and the trained parts."""
    from pipelines.segmentation.vdit import model as vdit

    return vdit.VDITModels(
        unet=vdit_unet(seed), vae=vdit_vae(seed), text_encoder=text_encoder(seed_of("vdit-clip", str(seed))).eval(),
        tokenizer=tokenizer(), vision=image_encoder(seed_of("vdit-vision", str(seed))).eval(),
        vision_processor=vdit_vision_processor(), roberta=vdit_roberta(seed), roberta_tokenizer=roberta_tokenizer(),
        trained=vdit_trained(seed), short_side=VDIT_SHORT_SIDE)
