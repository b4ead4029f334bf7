"""Export a run as a Hugging Face `datasets` dataset: one example per mixture (image, variant).

Columns: `image` (`Image`, the source file's encoded bytes), `audio` (`Audio`, the mixture's FLAC
bytes), `concepts`, `caption`, `components` (per chunk: source, concept, CLAP scores, target and
measured LUFS, gain), the mixture's loudness figures and `split` (from the run's `shard_index`;
`unsplit` when the shards stage has not run). `save_to_disk` goes to `<out>`, the same rows as
Parquet (with the features in its metadata) to `<out>/parquet/`.

`datasets` >= 4 decodes `Audio` with torchcodec. torchcodec's wheels for torch 2.13 are CUDA builds
(they need libnvrtc), so on a CPU-only torch decode the audio with soundfile instead: `decode_audio`
(or `ds.cast_column("audio", Audio(decode=False))` and `soundfile.read(io.BytesIO(x["bytes"]))`).
"""

from __future__ import annotations

import io
from pathlib import Path

from sonify.engine.files import atomic_path
from sonify.engine.ids import concept_id
from sonify.engine.schemas import COMPONENT_TYPE, EXPORT_COMPONENT_FIELDS, STATUS_OK
from sonify.publish.data import Run
from sonify.sources.images import read_image_bytes

MATCH_FIELDS = ("score", "threshold", "n_eligible")   # of the component's matches row


def features(audio=None):
    """The dataset's features; `audio` replaces the Audio feature (the writer stores plain bytes first)."""
    from datasets import Audio, Features, Image, List, Value

    arrow = {"int8": "int8", "int32": "int32", "float": "float32", "double": "float64", "string": "string", "bool": "bool"}
    comp = {n: Value(arrow[str(COMPONENT_TYPE.field(n).type)]) for n in EXPORT_COMPONENT_FIELDS}   # the mixes' component type
    comp.update(score=Value("float32"), threshold=Value("float32"), n_eligible=Value("int32"))
    concept = {"object": Value("string"), "sound": Value("string"), "text": Value("string")}
    return Features({
        "id": Value("string"), "image_id": Value("string"), "variant": Value("string"), "split": Value("string"),
        "image": Image(), "audio": audio or Audio(), "sample_rate": Value("int32"),
        "caption": Value("string"), "concepts": List(concept), "components": List(comp),
        "lufs": Value("float64"), "peak_dbfs": Value("float64"), "mix_gain_db": Value("float64"),
        "image_source": Value("string"), "image_uri": Value("string"),
    })


def examples(run_dir: str):
    """The rows, one mixture at a time (media read as each row is made)."""
    run = Run(run_dir)
    images = run.by_id("images")
    image_paths = run.paths("images")
    concepts = {r["id"]: r for r in run.rows("concepts")}
    captions = {r["id"]: r for r in run.rows("captions")}
    matches = {r["id"]: r for r in run.rows("matches") if r["status"] == STATUS_OK}
    split = {r["mix_id"]: r["split"] for r in run.rows("shard_index", ["mix_id", "split"])}
    for m in run.ok_mixes():
        img = images[m["image_id"]]
        comps = []
        for c in m["components"]:
            match = matches.get(concept_id(m["id"], c["concept_index"]), {})
            comps.append({**{k: c[k] for k in EXPORT_COMPONENT_FIELDS}, **{k: match.get(k) for k in MATCH_FIELDS}})
        yield {
            "id": m["id"], "image_id": m["image_id"], "variant": m["variant"], "split": split.get(m["id"], "unsplit"),
            "image": {"bytes": read_image_bytes(image_paths.locate(img), img["tar_offset"], img["nbytes"]), "path": Path(img["uri"]).name},
            "audio": {"bytes": (run.dir / m["path"]).read_bytes(), "path": Path(m["path"]).name},
            "sample_rate": m["sample_rate"], "caption": (captions.get(m["id"]) or {}).get("caption"),
            "concepts": (concepts.get(m["id"]) or {}).get("concepts") or [], "components": comps,
            "lufs": m["lufs"], "peak_dbfs": m["peak_dbfs"], "mix_gain_db": m["mix_gain_db"],
            "image_source": img["source"], "image_uri": img["uri"],
        }


def export_hf(run_dir: str | Path, out: str | Path, rows_per_parquet: int = 1000) -> int:
    """Write the dataset to `out` (replacing it whole); returns the number of examples."""
    import shutil

    import datasets

    Run(run_dir)   # fails in one line before anything is written when run_dir holds no run
    raw_audio = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    with atomic_path(Path(out)) as tmp:
        (tmp / "parquet").mkdir(parents=True)
        # Audio.encode_example imports torchcodec even for bytes; the bytes are stored as they are and
        # the column is then cast to Audio (a schema change only), so writing needs no decoder
        ds = datasets.Dataset.from_generator(examples, gen_kwargs={"run_dir": str(run_dir)}, features=features(raw_audio),
                                             cache_dir=str(tmp / ".cache"))
        ds = ds.cast_column("audio", datasets.Audio())
        ds.save_to_disk(str(tmp))
        for i in range(0, len(ds), rows_per_parquet):
            ds.select(range(i, min(i + rows_per_parquet, len(ds)))).to_parquet(
                str(tmp / "parquet" / f"data-{i // rows_per_parquet:05d}.parquet"))
        n = len(ds)
        del ds
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
    return n


def decode_audio(example: dict) -> tuple:
    """(samples float64 [frames] or [frames, channels], rate) of an example's `audio`, with soundfile."""
    import soundfile as sf

    a = example["audio"]
    return sf.read(io.BytesIO(a["bytes"]) if a.get("bytes") else a["path"])
