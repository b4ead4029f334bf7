"""The report: one static `index.html` plus assets (plots, thumbnails, chunk clips) that opens from disk.

Mixtures are linked where they live under the run; each matched chunk is cut to its clip as mixed
(decoded from its source, zero-padded to the chunk length) into `assets/chunks/`, since sources may
live anywhere and are whole files. Large runs are sampled with the keyed generator.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from sonify.engine.files import atomic_write
from sonify.engine.schemas import STATUS_OK
from sonify.media.audio import load_chunk
from sonify.publish.data import Run, sample
from sonify.publish.experiments import experiments_html
from sonify.publish.plots import make_plots

TEMPLATE = Path(__file__).with_name("report.html")


@dataclass
class ReportConf:
    max_images: int = 200        # kept images in the gallery (sampled, seeded, beyond this)
    max_dropped: int = 200       # dropped images listed
    page_size: int = 12          # gallery cards per page
    thumb_side: int = 320        # thumbnails' longer side in pixels
    seed: int = 0
    chunk_seconds: float = 5.0   # the clip length chunks were mixed at (the run's stages.audio.chunk_seconds)


def esc(x) -> str:
    return html.escape("" if x is None else str(x))


def fmt(x, digits: int = 2) -> str:
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def write_thumb(run: Run, image: dict, out: Path, side: int) -> bool:
    from sonify.sources.images import load_image

    try:
        im = load_image(image, run.paths("images"), max_pixels=89_478_485, max_side=side)
    except Exception:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    im.thumbnail((side, side))
    atomic_write(out, lambda tmp: im.save(tmp, "JPEG", quality=85))
    return True


def write_clip(run: Run, comp: dict, rate: int, conf: ReportConf, out: Path) -> float:
    """The chunk as it was mixed, as FLAC; returns its duration in seconds."""
    if not out.exists():
        y = load_chunk(run.paths("audio").resolve(comp["source"], comp["uri"]), comp["start_frame"], comp["num_frames"], rate, conf.chunk_seconds)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: sf.write(str(tmp), y, rate, format="FLAC", subtype="PCM_16"))
    return sf.info(str(out)).frames / rate


def summary_html(counts: dict[str, dict]) -> str:
    rows = []
    for name, c in counts.items():
        errs = ", ".join(f"{k}: {v}" for k, v in c["errors"].items()) or "-"
        fate = f"kept {c['kept']}; dropped " + (", ".join(f"{k}: {v}" for k, v in c["dropped"].items()) or "none") if "kept" in c else ""
        rows.append(f"<tr><td>{esc(name)}</td><td>{c['rows']}</td><td>{c['ok']}</td><td>{esc(errs)}</td><td>{esc(fate)}</td></tr>")
    return ("<table class='summary'><tr><th>table</th><th>rows</th><th>ok</th><th>errors by reason</th>"
            "<th>filter</th></tr>" + "".join(rows) + "</table>")


def audio_tag(src: str, seconds: float, cls: str) -> str:
    return f"<audio class='{cls}' controls preload='metadata' src='{esc(src)}' data-expected='{seconds:.6f}'></audio>"


def variant_html(mix: dict | None, concepts: dict | None, caption: dict | None, matches: dict, clips: dict, mix_src: str | None) -> str:
    variant = (mix or concepts or caption)["variant"]
    parts = [f"<div class='variant'><h4>{esc(variant)}</h4>",
             f"<p class='caption'><b>caption:</b> {esc(caption['caption'] if caption else '-')}</p>"]
    items = (concepts or {}).get("concepts") or []
    parts.append("<ul class='concepts'>")
    comps = {c["concept_index"]: c for c in (mix or {}).get("components") or []}
    for i, c in enumerate(items):
        m, comp = matches.get(i), comps.get(i)
        line = f"<li><b>{esc(c['object'])}</b> - {esc(c['sound'])}"
        if m:
            line += (f"<div class='match'>chunk {esc(m['chunk_id'])} ({esc(comp['source'] if comp else '')} "
                     f"{esc(comp['uri'] if comp else '')}) cosine {fmt(m['cosine'], 3)}, score {fmt(m['score'], 3)}, "
                     f"threshold {fmt(m['threshold'], 3)}, eligible {m['n_eligible']}")
            if comp:
                line += (f"; target {fmt(comp['target_lufs'])} LUFS, measured {fmt(comp['measured_lufs'])} LUFS, "
                         f"gain {fmt(comp['gain_db'])} dB" + ("" if comp["included"] else f"; left out: {esc(comp['reason'])}"))
            line += "</div>"
            if m["chunk_id"] in clips:
                line += audio_tag(*clips[m["chunk_id"]], "chunk")
        line += "</li>"
        parts.append(line)
    parts.append("</ul>")
    if mix and mix_src:
        parts.append(f"<div class='mix'><b>mixture</b> {fmt(mix['lufs'])} LUFS, peak {fmt(mix['peak_dbfs'])} dBFS, "
                     f"mix gain {fmt(mix['mix_gain_db'])} dB {audio_tag(mix_src, mix['duration'], 'mixture')}</div>")
    elif mix:
        parts.append(f"<div class='mix'>no mixture: {esc(mix['error'])}</div>")
    parts.append("</div>")
    return "".join(parts)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, conf: ReportConf | None = None) -> Path:
    """Write the report of a run; returns the path of its index.html."""
    conf = conf or ReportConf()
    run = Run(run_dir)
    out = Path(out_dir) if out_dir else run.dir / "report"
    assets = out / "assets"
    plots = make_plots(run, assets / "plots")
    kept = sample(run.kept_ids(), conf.max_images, conf.seed, "report-kept")
    images = {i: rs[0] for i, rs in run.grouped("images", "id", only=kept).items()}
    concepts, captions, mixes = (run.grouped(t, only=kept) for t in ("concepts", "captions", "mixes"))
    matches: dict[tuple, dict] = {(m["image_id"], m["variant"], m["concept_index"]): m
                                  for ms in run.grouped("matches", only=kept).values() for m in ms if m["status"] == STATUS_OK}
    cards = []
    for image_id in kept:
        img = images[image_id]
        thumb = f"assets/images/{image_id}.jpg"
        has_thumb = write_thumb(run, img, out / thumb, conf.thumb_side)
        variants = {}
        for r in concepts.get(image_id, []) + captions.get(image_id, []) + mixes.get(image_id, []):
            variants.setdefault(r["variant"], {})
        body = []
        for variant in sorted(variants):
            mix = next((m for m in mixes.get(image_id, []) if m["variant"] == variant), None)
            con = next((c for c in concepts.get(image_id, []) if c["variant"] == variant), None)
            cap = next((c for c in captions.get(image_id, []) if c["variant"] == variant), None)
            if con is None or not con.get("concepts"):
                continue
            clips, vm = {}, {}
            for comp in (mix or {}).get("components") or []:
                m = matches.get((image_id, variant, comp["concept_index"]))
                if m is None:
                    continue
                vm[comp["concept_index"]] = m
                clip = f"assets/chunks/{comp['chunk_id']}.flac"
                try:
                    clips[comp["chunk_id"]] = (clip, write_clip(run, comp, mix["sample_rate"], conf, out / clip))
                except Exception:
                    pass   # its source is gone: the card still shows the scores
            src = os.path.relpath(run.dir / mix["path"], out) if mix and mix["status"] == STATUS_OK else None
            body.append(variant_html(mix, con, cap, vm, clips, src))
        img_tag = f"<img class='thumb' src='{thumb}' alt='{esc(image_id)}'>" if has_thumb else "<div class='thumb'>no preview</div>"
        cards.append(f"<div class='card' data-image='{esc(image_id)}'>{img_tag}<div class='meta'><h3>{esc(image_id)}</h3>"
                     f"<p class='src'>{esc(img['source'])}: {esc(img['uri'])} ({img['width']}x{img['height']})</p>"
                     + "".join(body) + "</div></div>")
    dropped = dropped_html(run, out, conf)
    pages = [cards[i:i + conf.page_size] for i in range(0, len(cards), conf.page_size)] or [[]]
    gallery = "".join(f"<section class='page' data-page='{i}'>{''.join(p)}</section>" for i, p in enumerate(pages))
    n_kept = len(run.kept_ids())
    note = f"showing all {n_kept} kept images" if len(kept) == n_kept else f"a seeded sample (seed {conf.seed}) of {len(kept)} of {n_kept} kept images"
    plot_html = "".join(f"<figure><img src='assets/plots/{n}' alt='{esc(c)}'><figcaption>{esc(c)}</figcaption></figure>" for n, c in plots)
    page = TEMPLATE.read_text().format(
        title=esc(f"sonify report: {run.dir.name}"), run=esc(run.dir.name), summary=summary_html(run.counts()),
        plots=plot_html, experiments=experiments_html(run.dir, out), note=esc(note), gallery=gallery, pages=len(pages), dropped=dropped,
        meta=esc(json.dumps({"kept_shown": len(kept), "kept_total": n_kept, "seed": conf.seed})))
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write(out / "index.html", page)


def dropped_html(run: Run, out: Path, conf: ReportConf) -> str:
    """Images the filter dropped and images that failed to decode, each with its reason."""
    reasons = {r["id"]: r["reason"] for r in run.rows("kept_images", ["id", "kept", "reason"]) if not r["kept"]}
    reasons.update({r["id"]: r["error"] for r in run.rows("images", ["id", "status", "error"]) if r["status"] != STATUS_OK})
    shown = sample(list(reasons), conf.max_dropped, conf.seed, "report-dropped")
    images = {i: rs[0] for i, rs in run.grouped("images", "id", only=shown).items()}
    rows = []
    for image_id in shown:
        img = images.get(image_id, {})
        thumb = f"assets/images/{image_id}.jpg"
        ok = img.get("status") == STATUS_OK and write_thumb(run, img, out / thumb, conf.thumb_side // 2)
        pic = f"<img class='small' src='{thumb}' alt='{esc(image_id)}'>" if ok else ""
        rows.append(f"<tr><td>{pic}</td><td>{esc(image_id)}</td><td>{esc(img.get('uri'))}</td><td>{esc(reasons[image_id])}</td></tr>")
    return (f"<p>{len(reasons)} images dropped or unreadable.</p><table class='dropped'><tr><th></th><th>image</th>"
            "<th>path</th><th>reason</th></tr>" + "".join(rows) + "</table>")
