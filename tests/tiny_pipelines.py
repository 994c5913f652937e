"""Tiny random-weight diffusers pipelines saved to a folder, for the parity tests (nothing downloaded):
a Stable-Diffusion-like pipeline (UNet2DConditionModel + CLIP text encoder and tokenizer made here, a
tiny vocabulary written by the test), a DiT pipeline, an SD3-like flow pipeline (SD3Transformer2DModel
with two tiny CLIP encoders with projection, no T5: the smallest set StableDiffusion3Pipeline accepts),
an SDXL-like pipeline (two CLIP encoders, the second with projection; the UNet's text_time added
conditions), a PixArt-α-like pipeline (T5 encoder) and a FLUX-like pipeline (CLIP + T5, guidance
embedding). The T5 tokenizer is transformers' tokenizers-backed ``T5Tokenizer`` built from a Unigram
vocabulary over the same words (no sentencepiece model needed)."""

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


def t5_tokenizer(max_length: int = 32):
    """A T5Tokenizer (tokenizers' Unigram) over :data:`WORDS`: <pad> 0, </s> 1, <unk> 2, then the words
    with their leading "▁" and single characters as the fallback pieces; no sentinel tokens."""
    from transformers import T5Tokenizer

    chars = sorted({c for w in WORDS for c in w})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def t5_text(vocab_size: int, seed: int = 0, d_model: int = 16):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=2,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
                   eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def sdxl_pipeline(folder: Path) -> Path:
    """An SDXL-like pipeline: UNet2DConditionModel with ``addition_embed_type: text_time`` (8×8 latents; the
    pooled projection of the second encoder and the six time ids as added conditions), CLIP text encoders
    of width 16 (the first plain, the second with projection 16; cross-attention 32 = both concatenated),
    VAE (16×16 images), SDXL's EulerDiscreteScheduler config (scaled_linear, leading, steps_offset 1)."""
    import diffusers

    tok = tokenizer(folder / "_tok")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                                          attention_head_dim=(2, 4), use_linear_projection=True,
                                          transformer_layers_per_block=(1, 2),
                                          addition_embed_type="text_time", addition_time_embed_dim=8,
                                          projection_class_embeddings_input_dim=6 * 8 + 16,
                                          down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                          up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()
    perturb(unet, 4)
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                             num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                                             interpolation_type="linear", prediction_type="epsilon")
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae(), text_encoder=clip_text(len(tok), seed=5), tokenizer=tok,
        text_encoder_2=clip_text(len(tok), projection=True, seed=6), tokenizer_2=tok, unet=unet, scheduler=sched,
        add_watermarker=False)
    pipe.save_pretrained(folder)
    return folder


def pixart_pipeline(folder: Path, sample_size: int = 8) -> Path:
    """A PixArt-α-like pipeline: PixArtTransformer2DModel (8×8 latents, learned σ, adaLN-single, width 24: its
    size conditions take a third each; the resolution and aspect-ratio conditions only at sample size 128,
    PixArt-α 1024's), a T5 encoder of width 16 and its tokenizer, VAE, PixArt-α's
    DPMSolverMultistepScheduler config (linear betas, DPM-Solver++ 2M, linspace spacing)."""
    import diffusers

    tok = t5_tokenizer()
    torch.manual_seed(0)
    net = diffusers.PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                             out_channels=8, num_layers=2, sample_size=sample_size, patch_size=2,
                                             cross_attention_dim=24, caption_channels=16, norm_num_groups=8).eval()
    perturb(net, 7)
    sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                                  num_train_timesteps=1000, solver_order=2,
                                                  algorithm_type="dpmsolver++", timestep_spacing="linspace")
    pipe = diffusers.PixArtAlphaPipeline(tokenizer=tok, text_encoder=t5_text(len(tok), seed=8), vae=vae(),
                                         transformer=net, scheduler=sched)
    pipe.save_pretrained(folder)
    return folder


def flux_pipeline(folder: Path, guidance_embeds: bool = True) -> Path:
    """A FLUX-like pipeline: FluxTransformer2DModel (4 latent channels packed in 2×2 patches: in_channels 16;
    one double and one single block; guidance embedding; out_channels left unset, as FLUX.1's saved config
    leaves it), CLIP text encoder (pooled: 16) and T5 encoder
    (width 16), VAE with shift and scaling factors (16×16 images: 8×8 latents), FLUX.1's
    FlowMatchEulerDiscreteScheduler config (dynamic shifting: μ from the image's sequence length)."""
    import diffusers

    tok = tokenizer(folder / "_tok")
    tok_2 = t5_tokenizer()
    torch.manual_seed(0)
    net = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                           pooled_projection_dim=16, guidance_embeds=guidance_embeds,
                                           axes_dims_rope=(4, 6, 6)).eval()
    perturb(net, 9)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                      max_shift=1.15, base_image_seq_len=256,
                                                      max_image_seq_len=4096)
    pipe = diffusers.FluxPipeline(scheduler=sched, vae=vae(shift_factor=0.1, scaling_factor=1.5),
                                  text_encoder=clip_text(len(tok), seed=10), tokenizer=tok,
                                  text_encoder_2=t5_text(len(tok_2), seed=11), tokenizer_2=tok_2, transformer=net)
    pipe.save_pretrained(folder)
    return folder
