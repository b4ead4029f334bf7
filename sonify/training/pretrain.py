"""Contrastive pre-training of the audio projector, before DiT training (`projector.pretrain: contrastive`).

The paper (A.10, A.11) replaces PixArt's caption projection T (T5-XXL's 4096 -> 1152) by an audio
projector from AST (768 -> 1152) and trains it from scratch with the DiT; it compares that with first
pre-training the projector contrastively against text embeddings, as SonicDiffusion and AudioToken do.
Here: for each training sample, the audio side is the projector's output over its AST tokens,
mean-pooled over the real frames; the text side is T(T5(text)) mean-pooled over the real tokens, with
T5 PixArt's text encoder and T PixArt's pretrained caption projection, where the text is the sample's
concept texts (the mixture's included components, joined by ", "). The loss is the symmetric InfoNCE
(CLIP's): cross-entropy of the cosine logits / temperature over the batch, both ways. Samples of one
batch with the same text are positives of each other (the target spreads evenly over them), not
false negatives. This project's choices: the joining of texts, the pooling, the temperature, AdamW.

The text embeddings are computed once and cached (`<output_dir>/projector_pretrain/text_cache.*`).
Batch i is a fixed function of (seed, i) (per-epoch keyed permutations of the samples), so a killed
pre-training resumes from its latest checkpoint to the same weights as an uninterrupted one. When it
finishes, `projector.safetensors` holds the weights DiT training starts from; a DiT checkpoint holds
the projector inside its transformer, so DiT resumes need nothing from here. Every rank computes the
same pre-training (same data, same seed); rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from sonify.engine.errors import ConfigError
from sonify.engine.files import atomic_path, atomic_write
from sonify.engine.keys import keyed_rng
from sonify.engine.schemas import upgrade_component

log = logging.getLogger("sonify.train")
FOLDER = "projector_pretrain"


def sample_index(urls: list[str]) -> list[tuple[str, dict, str]]:
    """(shard, its ast.npy member, text) per readable sample with concept texts, in shard order."""
    from sonify.training.data import read_members

    out = []
    for url in urls:
        found, err = index_shard_safe(url)
        with open(url, "rb") as f:
            for key, members in found:
                if "ast.npy" not in members or "json" not in members:
                    continue
                meta = json.loads(read_members(f, {"json": members["json"]})["json"])
                texts = [text for c in meta.get("components") or [] if (text := upgrade_component(c).get("text"))]
                if texts:
                    out.append((url, members["ast.npy"], ", ".join(texts)))
    if not out:
        raise ConfigError("projector.pretrain=contrastive: no shard sample holds concept texts (the json's components)")
    return out


def index_shard_safe(url: str):
    from sonify.training.data import index_shard

    found, err = index_shard(url)
    if err is not None:
        log.warning("projector pre-training: %s is partly unreadable (%s); its samples before the error are used", url, err)
    return found, err


def text_embeddings(cfg, texts: list[str], device: str) -> np.ndarray:
    """pooled T(T5(text)) per text, float32 (N, width of the DiT)."""
    import torch
    from diffusers import PixArtTransformer2DModel
    from transformers import AutoTokenizer, T5EncoderModel

    from sonify.models.loading import load_pretrained

    p = cfg.projector
    tok = load_pretrained(AutoTokenizer, p.text_encoder, cfg.tiny_dir, role="text_encoder", subfolder="tokenizer")
    t5 = load_pretrained(T5EncoderModel, p.text_encoder, cfg.tiny_dir, role="text_encoder", subfolder="text_encoder").to(device).eval()
    dit = load_pretrained(PixArtTransformer2DModel, cfg.dit, cfg.tiny_dir, role="dit", subfolder=cfg.dit_subfolder)
    proj = dit.caption_projection.to(device).eval()          # T: PixArt's pretrained caption projection
    if t5.config.d_model != dit.config.caption_channels:
        raise ConfigError(f"projector.text_encoder is {t5.config.d_model} wide but {cfg.dit}'s caption projection takes "
                          f"{dit.config.caption_channels}: use the DiT's own text encoder")
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), p.text_batch):
            enc = tok(texts[i:i + p.text_batch], padding="max_length", truncation=True, max_length=p.text_max_tokens,
                      return_tensors="pt").to(device)
            hidden = proj(t5(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state)
            m = enc.attention_mask[..., None].to(hidden.dtype)
            out.append(((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu().numpy())
    return np.concatenate(out)


def cached_text_embeddings(cfg, texts: list[str], folder: Path, device: str, write: bool) -> np.ndarray:
    """The cache when it holds these texts for this encoder and DiT, else computed (and written by rank 0)."""
    key = {"text_encoder": cfg.projector.text_encoder, "dit": cfg.dit, "max_tokens": cfg.projector.text_max_tokens, "texts": texts}
    meta, arr = folder / "text_cache.json", folder / "text_cache.npy"
    if meta.is_file() and arr.is_file() and json.loads(meta.read_text()) == key:
        return np.load(arr)
    emb = text_embeddings(cfg, texts, device)
    if write:
        atomic_write(arr, lambda tmp: _save_npy(tmp, emb))
        atomic_write(meta, json.dumps(key).encode())
    return emb


def _save_npy(path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def batch_rows(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    """The sample rows of batch `step`: position step*batch onwards in per-epoch keyed permutations of n rows."""
    start, rows = step * batch, []
    while len(rows) < batch:
        epoch, offset = divmod(start + len(rows), n)
        perm = keyed_rng(seed, "projector_pretrain", epoch).permutation(n)
        rows.extend(perm[offset:offset + batch - len(rows)].tolist())
    return np.asarray(rows)


def audio_tokens(index, rows, max_frames: int):
    import torch

    from sonify.training.data import load_npy, read_members

    arrays = []
    for r in rows:
        url, member, _ = index[r]
        with open(url, "rb") as f:
            arrays.append(load_npy(read_members(f, {"ast.npy": member})["ast.npy"]).astype(np.float32)[:max_frames])
    t = max(a.shape[0] for a in arrays)
    tokens = np.zeros((len(arrays), t, arrays[0].shape[1]), np.float32)
    mask = np.zeros((len(arrays), t), np.float32)
    for i, a in enumerate(arrays):
        tokens[i, :a.shape[0]], mask[i, :a.shape[0]] = a, 1.0
    return torch.from_numpy(tokens), torch.from_numpy(mask)


def info_nce(audio, text, same, temperature: float):
    """Symmetric InfoNCE over cosine logits; `same[i, j]` marks pairs that share a text (positives)."""
    import torch.nn.functional as F

    logits = F.normalize(audio, dim=-1) @ F.normalize(text, dim=-1).T / temperature
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (-(target * F.log_softmax(logits, 1)).sum(1).mean() - (target.T * F.log_softmax(logits.T, 1)).sum(1).mean())


def projector_loss(projector, tokens, mask, text, same, temperature: float):
    pooled = (projector(tokens) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return info_nce(pooled, text, same, temperature)


def _checkpoints(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("checkpoint-*") if (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def pretrain_projector(cfg, model, urls: list[str], device: str, rank: int = 0) -> dict:
    """Pre-train `model.caption_projection` (resuming from its latest checkpoint), or load the finished weights.
    Returns {"steps", "losses"}: the loss of every step, this run's and the resumed ones'."""
    import torch
    from safetensors.torch import load_file, save_file

    p, folder = cfg.projector, Path(cfg.output_dir) / FOLDER
    projector = model.caption_projection
    done = folder / "projector.safetensors"
    if done.is_file():
        projector.load_state_dict(load_file(done))
        return json.loads((folder / "losses.json").read_text())
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    index = sample_index(urls)
    texts = sorted({t for _, _, t in index})
    text_row = {t: i for i, t in enumerate(texts)}
    text_emb = torch.from_numpy(cached_text_embeddings(cfg, texts, folder, device, rank == 0)).to(device)
    labels = np.asarray([text_row[t] for _, _, t in index])
    projector.to(device).train()
    params = list(projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=p.lr, weight_decay=cfg.weight_decay)
    step, losses = 0, []
    found = _checkpoints(folder)
    if found:
        state = torch.load(found[-1] / "state.pt", map_location="cpu", weights_only=False)
        projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        step, losses = state["step"], state["losses"]
        log.info("projector pre-training resumed from %s at step %d", found[-1], step)
    batch = cfg.per_device_batch
    while step < p.pretrain_steps:
        rows = batch_rows(cfg.seed, step, len(index), batch)
        tokens, mask = audio_tokens(index, rows, cfg.max_audio_frames)
        lab = torch.from_numpy(labels[rows])
        same = (lab[:, None] == lab[None, :]).float().to(device)
        loss = projector_loss(projector, tokens.to(device), mask.to(device), text_emb[lab.to(device)], same, p.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % cfg.log_every == 0 and rank == 0:
            log.info("projector pre-training step %d loss %.5f", step, losses[-1])
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == p.pretrain_steps):
            with atomic_path(folder / f"checkpoint-{step}") as tmp:
                tmp.mkdir(parents=True)
                torch.save({"projector": projector.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                            "losses": losses}, tmp / "state.pt")
            for old in _checkpoints(folder)[:-max(1, cfg.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
    record = {"steps": step, "losses": losses}
    if rank == 0:
        atomic_write(folder / "losses.json", json.dumps(record).encode())
        atomic_write(done, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}, str(tmp)))
    return record
