"""Tab "Sonify an image": concepts (from the run's VLM, or typed), Algorithm 1 per concept, the LUFS mixture.

Each concept's CLAP text embedding is matched against the whole pool with the run's rule and k
(`stages.retrieve`), exactly as the retrieve stage does (`BlockedRetriever` + `choose`): the chunk,
its cosine, the score the rule used (SSR in mode ssr), the threshold lb and the eligible-set size.
Draws are keyed like the pipeline's, by (run.seed, image, variant, concept index), with the image
named by its bytes' hash and the variant by the VLM or `typed`; "draw again" adds the draw number to
the key, so every draw is reproducible. The mixture is the mix stage's: each chunk decoded at the
mix rate, measured (BS.1770-4), gained to the target its keyed rule draws from [lufs_min, lufs_max],
summed by the one renderer with the peak guard (`sonify.mixing.render`). Silent chunks are left out,
as in the mix stage.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from sonify.webapp.runtime import AppError, AppRun, check_upload

TYPED = "typed"   # the variant name of concepts a user typed (no VLM)


@dataclass
class Upload:
    image: object            # PIL image, RGB
    key: str                 # hash of the file's bytes: names the image in the draw keys


@dataclass
class SonifyResult:
    rows: list[dict] = field(default_factory=list)
    mixture: str | None = None           # WAV path of the LUFS mixture
    mixture_lufs: float | None = None
    mix_gain_db: float | None = None
    notes: list[str] = field(default_factory=list)


def decode_image(app: AppRun, path) -> Upload:
    """The uploaded image decoded as the concepts stage decodes images (EXIF orientation, RGB, bounded side)."""
    from sonify.media.image import ImageRejected, load_rgb

    p = check_upload(path, "image", app.conf)
    data = p.read_bytes()
    c = app.cfg.stages.concepts
    try:
        image = load_rgb(data, int(c.max_pixels), int(c.max_image_side))
    except ImageRejected as e:
        raise AppError(f"the image {p.name} cannot be decoded ({e.reason}: {e.detail})") from None
    return Upload(image, hashlib.sha256(data).hexdigest()[:16])


def parse_typed(text: str, template: str, max_concepts: int) -> list[str]:
    """Typed concepts, one a line ('dog - barking' or just 'rain on a tin roof'), made into CLAP queries by the
    run's text template as imported items are."""
    from sonify.concepts.parser import item_line, make_text, split_item

    out = []
    for line in (text or "").splitlines():
        if not item_line(line):
            continue
        obj, sound = split_item(line)
        out.append(make_text(obj, sound, template, item_line(line)))
    if not out:
        raise AppError("no concepts: type one a line (e.g. 'dog - barking'), or ask the VLM")
    if len(out) > max_concepts:
        raise AppError(f"{len(out)} concepts; at most {max_concepts} (--max-concepts)")
    return out


def ask_vlm(app: AppRun, upload: Upload, vlm: str) -> tuple[str, list[str]]:
    """The run's VLM on the image with the run's prompts: (caption, concept lines), as the concepts stage
    parses them. A reply with no list gives an AppError (the user can type concepts instead)."""
    from sonify.concepts.parser import parse_concepts
    from sonify.engine.config import resolve_text

    c = app.cfg.stages.concepts
    model = app.vlm(vlm)
    caption = model.generate([upload.image], resolve_text(c.caption_prompt), dict(c.caption_generation))[0]
    reply = model.generate([upload.image], resolve_text(c.concepts_prompt), dict(c.generation))[0]
    parsed = parse_concepts(reply, int(c.max_concepts), str(c.text_template))
    if parsed.error:
        raise AppError(f"{vlm} gave no usable concepts ({parsed.error}); type concepts instead. Its reply: {reply[:200]!r}")
    return caption, [x.text for x in parsed.concepts]


def match(app: AppRun, texts: list[str], image_key: str, variant: str = TYPED, draw: int = 0) -> list[dict]:
    """Algorithm 1 (the run's rule and k) for each text against the whole pool; one row per text."""
    from sonify.engine.keys import keyed_rng
    from sonify.retrieval.algorithm import choose, choose_distinct

    queries = app.text_queries(texts)
    retriever = app.retriever()
    rows, taken = [], set()
    for i, (text, (vals, idx, ties)) in enumerate(zip(texts, retriever.topk(queries, True))):
        key = (app.seed, image_key, variant, i) + (("draw", draw) if draw else ())
        rng = keyed_rng(*key)
        if app.distinct:
            m = choose_distinct(vals, idx, app.mode, rng, taken, app.temperature, ties)
            taken.add(m.chunk)
        else:
            m = choose(vals, idx, app.mode, rng, app.temperature, ties)
        rows.append({"concept_index": i, "text": text, "row": m.chunk, "cosine": m.cosine, "score": m.score,
                     "threshold": m.threshold, "n_eligible": m.n_eligible, "rank": m.rank, "fallback": m.fallback,
                     "mode": app.mode, "k": retriever.k})
    for r, info in zip(rows, app.chunk_rows([r["row"] for r in rows])):
        r.update(info)
    return rows


def mixture(app: AppRun, rows: list[dict], image_key: str, variant: str) -> SonifyResult:
    """The mix stage's mixture of the matched chunks (its target rule, meter and renderer); a player per chunk."""
    from sonify.media.loudness import LoudnessMeter
    from sonify.mixing.render import render, target_lufs

    mix, rate = app.mix, int(app.mix.sample_rate)
    meter = LoudnessMeter(rate)
    out = SonifyResult(rows=rows)
    signals, weighted, gains = [], [], []
    for r in rows:
        x = app.chunk_audio(r, rate)
        r["audio"] = app.temp.wav(x, rate, "chunk")
        r["target_lufs"] = target_lufs(float(mix.lufs_min), float(mix.lufs_max), app.seed, image_key, variant, r["concept_index"])
        y = meter.k_weight(meter.pad(x))
        measured = meter.integrated_weighted(y)
        r["measured_lufs"] = measured if math.isfinite(measured) else None
        if not math.isfinite(measured):
            out.notes.append(f"concept {r['concept_index'] + 1}: chunk {r['chunk_id']} is silent (below the -70 LUFS gate), "
                             "left out of the mixture")
            continue
        signals.append(x)
        weighted.append(y)
        gains.append(r["target_lufs"] - measured)
    if not signals:
        out.notes.append("no audible chunk: no mixture")
        return out
    final, mix_gain = render(signals, gains, ceiling_dbfs=float(mix.peak_ceiling_dbfs))
    out.mixture = app.temp.wav(final, rate, "mixture")
    out.mix_gain_db = mix_gain
    out.mixture_lufs = meter.integrated_weighted(render(weighted, gains, mix_gain)[0])
    return out


def sonify(app: AppRun, texts: list[str], image_key: str, variant: str = TYPED, draw: int = 0) -> SonifyResult:
    """Match every concept, then mix: what the tab shows for one press of "Sonify" (or "Draw again")."""
    return mixture(app, match(app, texts, image_key, variant, draw), image_key, variant)


def typed_key(texts: list[str]) -> str:
    """The image key when no image was uploaded: the concepts themselves."""
    return "text:" + hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]

