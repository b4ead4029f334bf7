"""Table schemas, declared once. Every table is a directory of Parquet files.

Each schema carries its version in the Parquet metadata; readers check it and fail loudly
(`tables.read_table`). Bump `version` when a table's columns change meaning or shape.
Reserved columns: the id column, ``status`` (``ok`` | ``error``) and ``error`` (``reason: detail``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"

_STATUS = [pa.field("status", pa.string(), nullable=False), pa.field("error", pa.string())]


@dataclass(frozen=True)
class TableSpec:
    name: str
    version: int
    id_column: str
    schema: pa.Schema
    doc: str


def _spec(name: str, version: int, doc: str, fields: list[tuple[str, pa.DataType, str]]) -> TableSpec:
    schema = pa.schema(
        [pa.field(n, t, metadata={"doc": d}) for n, t, d in fields] + _STATUS,
        metadata={"sonify.table": name, "sonify.schema_version": str(version)},
    )
    return TableSpec(name=name, version=version, id_column=fields[0][0], schema=schema, doc=doc)


# Paths travel (schema versions 3, 2, 2, 4 below; images 4 and audio_files 3 dropped `relpath`, which always held `uri`): `uri` is stored relative to its source's declared root
# and resolved at read time against the roots of the config in hand (`sonify.sources.SourcePaths`).
IMAGES = _spec("images", 4, "One row per input image: where it is, what it is, whether it decodes.", [
    ("id", pa.string(), "stable id: hash of source name and the image's path inside the source (`uri`; `sonify.engine.ids.stable_id`)"),
    ("source", pa.string(), "name of the image source in the pipeline config"),
    ("uri", pa.string(), "where the bytes are: relative to the source's declared root ('shard.tar#member' inside a tar), "
                         "resolved at read time; a URL as given (a list entry outside the root is an outside_root error row)"),
    ("tar_offset", pa.int64(), "byte offset of the member's data inside its tar (null otherwise)"),
    ("nbytes", pa.int64(), "size of the encoded image in bytes"),
    ("sha256", pa.string(), "sha256 of the encoded bytes"),
    ("format", pa.string(), "PIL format (JPEG, PNG, ...)"),
    ("mode", pa.string(), "PIL mode as stored (RGB, L, CMYK, I;16, ...)"),
    ("width", pa.int32(), "width after EXIF orientation"),
    ("height", pa.int32(), "height after EXIF orientation"),
    ("exif_orientation", pa.int8(), "EXIF orientation tag (1 = upright)"),
])

AUDIO_FILES = _spec("audio_files", 3, "One row per input audio file.", [
    ("id", pa.string(), "stable id: hash of source name and the file's path inside the source (`uri`)"),
    ("source", pa.string(), "name of the audio source in the pipeline config (e.g. fsd50k)"),
    ("uri", pa.string(), "the file, relative to the source's declared root and resolved at read time "
                         "(a list entry outside the root is an outside_root error row, its normalised path kept as its key)"),
    ("labels", pa.list_(pa.string()), "labels from the source list, if any"),
    ("format", pa.string(), "container format (WAV, FLAC, OGG, MP3...)"),
    ("sample_rate", pa.int32(), "native sample rate in Hz"),
    ("channels", pa.int16(), "channel count (chunks are downmixed to mono)"),
    ("frames", pa.int64(), "decoded length in frames"),
    ("duration", pa.float64(), "decoded length in seconds"),
    ("nbytes", pa.int64(), "file size"),
    ("peak_dbfs", pa.float32(), "sample peak of the mono downmix in dBFS (-inf if silent)"),
    ("num_chunks", pa.int32(), "number of chunks cut from this file"),
])

AUDIO_CHUNKS = _spec("audio_chunks", 3, "Non-overlapping mono chunks that point into their source file.", [
    ("id", pa.string(), "'<file id>-<chunk index>'"),
    ("file_id", pa.string(), "id in audio_files"),
    ("source", pa.string(), "audio source name"),
    ("uri", pa.string(), "the source file as in audio_files (relative to the source's root; chunks are decoded from it on demand)"),
    ("chunk_index", pa.int32(), "position of the chunk in its file"),
    ("sample_rate", pa.int32(), "native sample rate of the source"),
    ("start_frame", pa.int64(), "first frame in the source, at its native rate"),
    ("num_frames", pa.int64(), "frames of real audio (the rest of the chunk is zero padding)"),
    ("offset", pa.float64(), "start in seconds"),
    ("duration", pa.float64(), "seconds of real audio"),
    ("padding", pa.float64(), "seconds of zero padding at the end (last chunk only)"),
    ("peak_dbfs", pa.float32(), "sample peak of the chunk in dBFS"),
    ("rms_dbfs", pa.float32(), "RMS level of the real audio in dBFS"),
    ("pcm_sha256", pa.string(), "sha256 of the chunk's decoded frames (float32 little-endian, interleaved, native rate and "
                                "channels): its content digest; a re-read file whose chunk is unchanged recomputes nothing downstream"),
])

CONCEPT_TYPE = pa.struct([("object", pa.string()), ("sound", pa.string()), ("text", pa.string())])

CONCEPTS = _spec("concepts", 2, "One row per (image, variant): the sounding concepts parsed from the VLM's reply (or imported).", [
    ("id", pa.string(), "the variant id '<variant key>-<image id>' (`sonify.engine.ids.variant_id`)"),
    ("image_id", pa.string(), "id in images"),
    ("variant", pa.string(), "the image's concept set: the VLM's model id or path, or the import's name"),
    ("origin", pa.string(), "'generate' (a VLM ran) or 'import' (read from a concepts table)"),
    ("prompt", pa.string(), "the prompt text used"),
    ("raw", pa.string(), "the VLM's reply, verbatim (or the imported items joined by newlines)"),
    ("concepts", pa.list_(CONCEPT_TYPE), "up to max_concepts (object, sound, text); text is the CLAP query"),
    ("n_concepts", pa.int32(), "len(concepts)"),
    ("items_found", pa.int32(), "list items in the reply before keeping the first max_concepts"),
])

CAPTIONS = _spec("captions", 2, "One row per (image, variant): the VLM's short caption, used by the silent-image filter.", [
    ("id", pa.string(), "same id as the concepts row"),
    ("image_id", pa.string(), "id in images"),
    ("variant", pa.string(), "the VLM's model id or path, or the import's name"),
    ("origin", pa.string(), "'generate' or 'import'"),
    ("prompt", pa.string(), "the prompt text used"),
    ("caption", pa.string(), "the caption, verbatim"),
])

KEPT_IMAGES = _spec("kept_images", 2, "One row per image that decoded: kept for sonification or dropped, with the reason.", [
    ("id", pa.string(), "id in images"),
    ("kept", pa.bool_(), "true: the image goes on to retrieval and mixing"),
    ("reason", pa.string(), "why dropped: 'keyword:<word>' (caption names a silent thing) or 'no_concepts'"),
    ("variants", pa.list_(pa.string()), "variants with at least one concept"),
    ("n_variants", pa.int32(), "len(variants)"),
    ("caption_hits", pa.list_(pa.string()), "captions that matched a silent keyword"),
])

# Embedding columns are declared as lists of float16; they are written as fixed-size lists of the
# model's width (`tables.conform` keeps a fixed-size list whose value type matches).
EMBEDDING = pa.list_(pa.float16())

AUDIO_EMBEDDINGS = _spec("audio_embeddings", 1, "One row per usable audio chunk: its CLAP audio embedding.", [
    ("id", pa.string(), "chunk id in audio_chunks"),
    ("file_id", pa.string(), "id in audio_files"),
    ("model", pa.string(), "CLAP model id or path"),
    ("embedding", EMBEDDING, "L2-normalised CLAP audio embedding, float16"),
    ("norm", pa.float32(), "norm of the projection before re-normalisation (NaN/zero rows are errors)"),
])

CONCEPT_EMBEDDINGS = _spec("concept_embeddings", 2, "One row per parsed concept: its CLAP text embedding.", [
    ("id", pa.string(), "the concept id '<variant id>-<concept index>' (`sonify.engine.ids.concept_id`)"),
    ("concept_id", pa.string(), "id in concepts"),
    ("image_id", pa.string(), "id in images"),
    ("variant", pa.string(), "variant name (as in concepts)"),
    ("concept_index", pa.int8(), "position of the concept in its variant (0..2)"),
    ("text", pa.string(), "the CLAP query text"),
    ("model", pa.string(), "CLAP model id or path"),
    ("embedding", EMBEDDING, "L2-normalised CLAP text embedding, float16"),
    ("norm", pa.float32(), "norm before re-normalisation"),
])

MATCHES = _spec("matches", 2, "One row per concept: the audio chunk Algorithm 1 picked for it.", [
    ("id", pa.string(), "id in concept_embeddings"),
    ("image_id", pa.string(), "id in images"),
    ("variant", pa.string(), "variant name (as in concepts)"),
    ("concept_index", pa.int8(), "position of the concept in its variant"),
    ("text", pa.string(), "the CLAP query text"),
    ("chunk_id", pa.string(), "id in audio_chunks of the chosen chunk"),
    ("cosine", pa.float32(), "cosine similarity of concept and chunk"),
    ("score", pa.float32(), "the score the rule used (SSR of the cosine in mode ssr)"),
    ("threshold", pa.float32(), "lb = mean of the top-k scores (NaN for argmax and softmax)"),
    ("n_eligible", pa.int32(), "size of the eligible set the chunk was drawn from"),
    ("rank", pa.int32(), "rank of the chosen chunk among the top k (0 = best)"),
    ("mode", pa.string(), "ssr | raw | argmax | softmax"),
    ("k", pa.int32(), "top-k used (min(k, pool size))"),
    ("fallback", pa.string(), "'ties_at_max' when nothing was strictly above the threshold"),
])

MATCH_ABLATIONS = TableSpec(
    name="match_ablations", version=2, id_column="id",
    schema=MATCHES.schema.with_metadata({"sonify.table": "match_ablations", "sonify.schema_version": "2"}),
    doc="Matches of stages.retrieve.ablation_modes (same columns as matches; id is '<concept embedding id>:<mode>').")

COMPONENT_TYPE = pa.struct([
    ("concept_index", pa.int8()), ("text", pa.string()), ("chunk_id", pa.string()),
    ("source", pa.string()), ("uri", pa.string()),
    ("source_rate", pa.int32()), ("start_frame", pa.int64()), ("num_frames", pa.int64()),
    ("offset", pa.float64()), ("duration", pa.float64()), ("cosine", pa.float32()),
    ("pcm_sha256", pa.string()),   # the chunk's decoded audio (audio_chunks.pcm_sha256): a changed source file remixes
    ("target_lufs", pa.float64()), ("measured_lufs", pa.float64()), ("gain_db", pa.float64()),
    ("included", pa.bool_()), ("reason", pa.string()),
])

# The release manifest's and the shards' json components are COMPONENT_TYPE's fields by name (one
# component type; the same field names in the mixes table, the release, the shards and the HF export).
RELEASE_COMPONENT_FIELDS = ("source", "uri", "source_rate", "start_frame", "num_frames", "offset", "duration",
                            "concept_index", "text", "cosine", "target_lufs", "measured_lufs", "gain_db")
SHARD_COMPONENT_FIELDS = ("text", "chunk_id", "source", "uri", "offset", "duration", "cosine",
                          "target_lufs", "measured_lufs", "gain_db")
EXPORT_COMPONENT_FIELDS = ("concept_index", "text", "chunk_id", "source", "uri", "offset", "duration", "cosine",
                           "target_lufs", "measured_lufs", "gain_db", "included")

# Names a release manifest (release version 1) and the shards' json (shards stage version 1) used before the
# tables' words were used everywhere: the one place they live. Readers of old files rename through these.
OLD_NAMES = {"image_relpath": "image_uri"}
OLD_COMPONENT_NAMES = {"dataset": "source", "relpath": "uri", "concept_text": "text", "concept": "text", "similarity": "cosine"}


def upgrade_component(comp: dict) -> dict:
    """A component dict (a shard json's, a JSON release's) in today's names."""
    return {(OLD_COMPONENT_NAMES[k] if k in OLD_COMPONENT_NAMES and OLD_COMPONENT_NAMES[k] not in comp else k): v
            for k, v in comp.items()}


def component_struct(names: tuple[str, ...]) -> pa.StructType:
    """The struct of COMPONENT_TYPE's fields `names`, in that order."""
    return pa.struct([COMPONENT_TYPE.field(n) for n in names])


def component_sql(names: tuple[str, ...], var: str) -> str:
    """DuckDB `struct_pack` of COMPONENT_TYPE's fields `names` taken from the struct `var` (a lambda's variable)."""
    return "struct_pack(" + ", ".join(f'"{n}" := {var}."{n}"' for n in names) + ")"


MIXES = _spec("mixes", 6, "One row per (image, variant): the loudness-normalised sum of its matched chunks.", [
    ("id", pa.string(), "the variant id ('<variant key>-<image id>', as in concepts)"),
    ("image_id", pa.string(), "id in images"),
    ("variant", pa.string(), "variant name (as in concepts)"),
    ("components", pa.list_(COMPONENT_TYPE), "per matched chunk: where it is (its audio source, and uri relative to that source's root), its concept, target and measured LUFS, gain, and whether it was summed"),
    ("n_components", pa.int32(), "components summed (silent ones are left out with a reason)"),
    ("repeated_chunks", pa.list_(pa.string()), "chunk ids matched by more than one concept of this mixture (summed coherently: up to 6 dB hotter); empty when all differ"),
    ("sample_rate", pa.int32(), "rate of the mixture"),
    ("duration", pa.float64(), "seconds"),
    ("mix_gain_db", pa.float64(), "gain applied to the sum by the peak guard (0 when the peak was under the ceiling)"),
    ("lufs", pa.float64(), "integrated loudness of the mixture"),
    ("peak_dbfs", pa.float64(), "sample peak of the mixture"),
    ("path", pa.string(), "FLAC file, relative to the run folder (mixes/<partition>/<variant key>/<image id>.flac)"),
    ("pcm24_sha256", pa.string(), "sha256 of the mixture quantised to 24-bit PCM (encoder-independent)"),
    ("flac_sha256", pa.string(), "sha256 of the FLAC file's bytes"),
])

AUDIO_FEATURES = _spec("audio_features", 3, "One row per mixture: its AST time series (a float16 .npy file).", [
    ("id", pa.string(), "the mixture (variant) id"),
    ("image_id", pa.string(), "id in images"),
    ("variant", pa.string(), "variant name (as in concepts)"),
    ("model", pa.string(), "AST model id or path"),
    ("path", pa.string(), "the .npy file (T x D float16), relative to the run folder"),
    ("sha256", pa.string(), "sha256 of the .npy file's bytes"),
    ("frames", pa.int32(), "T: time steps after pooling over frequency"),
    ("dim", pa.int32(), "D: the AST width (768)"),
    ("pooling", pa.string(), "mean | max (over frequency) | none (all F x T patch tokens)"),
    ("input_frames", pa.int32(), "filterbank frames fed to AST (the clip length, not 1024)"),
])

IMAGE_LATENTS = _spec("image_latents", 2, "One row per kept image: its VAE latent distribution (a float16 .npy file).", [
    ("id", pa.string(), "id in images"),
    ("model", pa.string(), "VAE id or path"),
    ("path", pa.string(), "the .npy file: [mean, std] stacked, shape (2, C, h, w), float16, relative to the run folder"),
    ("sha256", pa.string(), "sha256 of the .npy file's bytes"),
    ("channels", pa.int32(), "C"),
    ("height", pa.int32(), "h"),
    ("width", pa.int32(), "w"),
    ("resolution", pa.int32(), "the square image size that was encoded"),
    ("scaling_factor", pa.float32(), "the VAE's scaling factor (multiply a sampled latent by it for the DiT)"),
])

SHARD_INDEX = _spec("shard_index", 2, "One row per training sample: which WebDataset shard holds it.", [
    ("id", pa.string(), "the sample key inside the shard ('<image id>_<variant key>')"),
    ("split", pa.string(), "train | val (by a hash of the image id: every variant of an image on one side)"),
    ("shard", pa.string(), "shard file name, e.g. train-000000.tar"),
    ("path", pa.string(), "the shard file, relative to the run folder (shards/<partition>/<shard>)"),
    ("position", pa.int32(), "position of the sample inside its shard"),
    ("image_id", pa.string(), "id in images"),
    ("variant", pa.string(), "variant name (as in concepts)"),
    ("mix_id", pa.string(), "id in mixes"),
    ("latent_bytes", pa.int64(), "size of latent.npy"),
    ("ast_bytes", pa.int64(), "size of ast.npy"),
    ("json_bytes", pa.int64(), "size of the json member"),
    ("jpg_bytes", pa.int64(), "size of jpg (0 when not included)"),
    ("flac_bytes", pa.int64(), "size of flac (0 when not included)"),
])

TABLES: dict[str, TableSpec] = {t.name: t for t in (IMAGES, AUDIO_FILES, AUDIO_CHUNKS, CONCEPTS, CAPTIONS, KEPT_IMAGES,
                                                    AUDIO_EMBEDDINGS, CONCEPT_EMBEDDINGS, MATCHES, MATCH_ABLATIONS, MIXES,
                                                    AUDIO_FEATURES, IMAGE_LATENTS, SHARD_INDEX)}


def table_spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; tables: {', '.join(sorted(TABLES))}") from None
