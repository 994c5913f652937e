"""Tiny random-weight diffusers pipelines saved to a folder, for the parity tests (nothing downloaded):
a Stable-Diffusion-like pipeline (UNet2DConditionModel + CLIP text encoder and tokenizer made here, a
tiny vocabulary written by the test), a DiT pipeline and an SD3-like flow pipeline (SD3Transformer2DModel
with two tiny CLIP encoders with projection, no T5: the smallest set StableDiffusion3Pipeline accepts)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("a", "photo", "of", "cat", "dog", "red", "blue", "car", "on", "the", "grass", "two", "sitting", "table")


def tokenizer(folder: Path, max_length: int = 12):
    """A CLIPTokenizer over :data:`WORDS` (byte-level BPE with no merges beyond whole words)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for w in WORDS for c in w})
    vocab = ["<|startoftext|>", "<|endoftext|>", "<unk>"] + chars + [c + "</w>" for c in chars]
    merges = []
    for w in WORDS:  # merge each word left to right into one token
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            if parts[0] not in vocab:
                vocab.append(parts[0])
    merges = list(dict.fromkeys(merges))
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                         model_max_length=max_length)


def clip_text(vocab_size: int, projection: bool = False, seed: int = 0, hidden: int = 16, layers: int = 2,
              max_length: int = 12):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=max_length,
                         projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def vae(latent_channels: int = 4, seed: int = 0, **config):
    import diffusers

    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                                   block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                                   down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, **config).eval()


def perturb(module, seed: int, scale: float = 0.02) -> None:
    """Add small noise to every parameter (zero-initialised output layers would make outputs trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def sd_pipeline(folder: Path, scheduler: str = "DDIMScheduler", prediction_type: str = "epsilon") -> Path:
    """A Stable-Diffusion-like pipeline: UNet2DConditionModel (8×8 latents, 4 channels), CLIP text encoder,
    VAE (16×16 images), scaled_linear schedule."""
    import diffusers

    tok = tokenizer(folder / "_tok")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=16,
                                          attention_head_dim=4,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    perturb(unet, 1)
    sched = getattr(diffusers, scheduler)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                          num_train_timesteps=1000, prediction_type=prediction_type)
    pipe = diffusers.StableDiffusionPipeline(vae=vae(), text_encoder=clip_text(len(tok)), tokenizer=tok, unet=unet,
                                             scheduler=sched, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def dit_pipeline(folder: Path) -> Path:
    """A DiT pipeline: DiTTransformer2DModel (8×8 latents, learned σ, 1000 classes: DiTPipeline's null class
    is 1000), VAE, DPM-Solver scheduler."""
    import diffusers

    torch.manual_seed(0)
    net = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                          num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                          norm_num_groups=8).eval()
    perturb(net, 2)
    sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", num_train_timesteps=1000)
    pipe = diffusers.DiTPipeline(transformer=net, vae=vae(), scheduler=sched)
    pipe.save_pretrained(folder)
    return folder


def sd3_pipeline(folder: Path, shift: float = 3.0) -> Path:
    """An SD3-like flow pipeline: SD3Transformer2DModel (8×8 latents, 4 channels), two CLIP text encoders with
    projection, no T5 (text_encoder_3 None), VAE with a shift factor, FlowMatchEulerDiscreteScheduler."""
    import diffusers

    tok = tokenizer(folder / "_tok")
    torch.manual_seed(0)
    net = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                          caption_projection_dim=16, pooled_projection_dim=32,
                                          pos_embed_max_size=8).eval()
    perturb(net, 3)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=net, scheduler=sched, vae=vae(shift_factor=0.1, scaling_factor=1.5),
        text_encoder=clip_text(len(tok), projection=True, seed=1), tokenizer=tok,
        text_encoder_2=clip_text(len(tok), projection=True, seed=2), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(folder)
    return folder
