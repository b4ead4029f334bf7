"""Every id the pipeline builds and takes apart, each with its SQL twin.

A Python function builds (or parses) an id where rows pass through Python; its `*_sql` twin returns
the DuckDB expression text that the planners use where ids are made inside a query. The twins are
kept equal by `tests/test_ids.py` on generated values. The values are those earlier runs wrote, so
partitions, releases and shard keys stay valid:

- `stable_id(source, key)`: 16 hex digits of sha1(source NUL key), the id of an image or audio file
  (key: its `uri`, the path inside its source).
- `variant_key(variant)`: 8 hex digits of sha1(variant name), a variant's (VLM's or import's) short key.
- `variant_id(variant, image_id)`: '<variant key>-<image id>', the id of concepts, captions, mixes and
  audio_features rows.
- `concept_id(variant_id, index)`: '<variant id>-<concept index>', the id of concept_embeddings and matches rows.
- `chunk_id(file_id, index)`: '<file id>-<chunk index, 5 digits>', the id of audio_chunks rows.
- `ablation_id(concept_id, mode)`: '<concept id>:<mode>', the id of match_ablations rows.
- `sample_key(image_id, variant_key)`: '<image id>_<variant key>', a WebDataset sample's key (no dots, no slashes).

Parsing relies on what each builder puts last or first: a variant key has no '-' and no '_' (8 hex digits), a concept
or chunk index is digits after the last '-', a mode has no ':' and a variant key no '_'; image and file
ids may hold anything.
"""

from __future__ import annotations

import hashlib

CHUNK_INDEX_DIGITS = 5
VARIANT_KEY_DIGITS = 8


def _sha1_prefix_sql(expr: str, n: int) -> str:
    return f"substr(sha1({expr}), 1, {n})"


def stable_id(source: str, key: str) -> str:
    """16 hex digits of sha1(source NUL key): the same file of the same source always gets the same id."""
    return hashlib.sha1(f"{source}\x00{key}".encode()).hexdigest()[:16]


def stable_id_sql(source: str, key: str) -> str:
    return _sha1_prefix_sql(f"{source} || chr(0) || {key}", 16)


def variant_key(variant: str) -> str:
    """Short stable key of a variant name, the prefix of its rows' ids (groups a variant's rows together)."""
    return hashlib.sha1(variant.encode()).hexdigest()[:VARIANT_KEY_DIGITS]


def variant_key_sql(variant: str) -> str:
    return _sha1_prefix_sql(variant, VARIANT_KEY_DIGITS)


def variant_id(variant: str, image_id: str) -> str:
    return f"{variant_key(variant)}-{image_id}"


def variant_id_sql(variant: str, image_id: str) -> str:
    return f"({variant_key_sql(variant)} || '-' || {image_id})"


def variant_id_from_key_sql(key: str, image_id: str) -> str:
    """A variant id from its key already computed (a literal, when one variant's rows are listed)."""
    return f"({key} || '-' || {image_id})"


def _split_last(text: str, sep: str, what: str, digits: bool = False) -> tuple[str, str]:
    """(head, tail) of `text` cut at its last `sep`; ValueError naming `what` when no builder made it."""
    head, found, tail = text.rpartition(sep)
    if not (found and tail) or (digits and not tail.isdigit()):
        raise ValueError(f"{text!r} is not {what}")
    return head, tail


def parse_variant_id(vid: str) -> tuple[str, str]:
    """(variant key, image id) of a variant id."""
    key, sep, image_id = vid.partition("-")
    if not (sep and key):
        raise ValueError(f"{vid!r} is not a variant id ('<variant key>-<image id>')")
    return key, image_id


def variant_key_of_sql(vid: str) -> str:
    """The variant key of a variant id (or of any id that starts with one)."""
    return f"split_part({vid}, '-', 1)"


def image_id_of_variant_sql(vid: str) -> str:
    return f"substr({vid}, strpos({vid}, '-') + 1)"


# Concept ids and chunk ids are both '<parent id>-<index>' (a chunk's index zero-padded to 5 digits).
def _indexed(parent: str, index: int, width: int) -> str:
    return f"{parent}-{int(index):0{width}d}"


def _indexed_sql(parent: str, index: str, width: int) -> str:
    return f"({parent} || '-' || printf('%0{width}d', {index}))" if width else f"({parent} || '-' || CAST({index} AS VARCHAR))"


def _parse_indexed(text: str, what: str) -> tuple[str, int]:
    parent, index = _split_last(text, "-", what, digits=True)
    return parent, int(index)


def parent_of_indexed_sql(text: str) -> str:
    """The parent id of a concept id (its variant id) or of a chunk id (its file id)."""
    return f"regexp_replace({text}, '-[0-9]+$', '')"


def index_of_indexed_sql(text: str) -> str:
    """The index of a concept id or a chunk id."""
    return f"CAST(regexp_extract({text}, '-([0-9]+)$', 1) AS INTEGER)"


def concept_id(vid: str, index: int) -> str:
    return _indexed(vid, index, 0)


def concept_id_sql(vid: str, index: str) -> str:
    return _indexed_sql(vid, index, 0)


def parse_concept_id(cid: str) -> tuple[str, int]:
    """(variant id, concept index) of a concept id."""
    return _parse_indexed(cid, "a concept id ('<variant id>-<concept index>')")


def chunk_id(file_id: str, index: int) -> str:
    return _indexed(file_id, index, CHUNK_INDEX_DIGITS)


def chunk_id_sql(file_id: str, index: str) -> str:
    return _indexed_sql(file_id, index, CHUNK_INDEX_DIGITS)


def parse_chunk_id(cid: str) -> tuple[str, int]:
    """(file id, chunk index) of a chunk id."""
    return _parse_indexed(cid, "a chunk id ('<file id>-<chunk index>')")


def ablation_id(cid: str, mode: str) -> str:
    return f"{cid}:{mode}"


def ablation_id_sql(cid: str, mode: str) -> str:
    return f"({cid} || ':' || {mode})"


def parse_ablation_id(aid: str) -> tuple[str, str]:
    """(concept id, mode) of a match_ablations id."""
    return _split_last(aid, ":", "an ablation id ('<concept id>:<mode>')")


def sample_key(image_id: str, key: str) -> str:
    """A WebDataset sample's key from its image id and its variant's key."""
    return f"{image_id}_{key}"


def sample_key_sql(image_id: str, key: str) -> str:
    return f"({image_id} || '_' || {key})"


def sample_key_of_variant(vid: str) -> str:
    """The sample key of a variant (mixture) id."""
    key, image_id = parse_variant_id(vid)
    return sample_key(image_id, key)


def sample_key_of_variant_sql(vid: str) -> str:
    return sample_key_sql(image_id_of_variant_sql(vid), variant_key_of_sql(vid))


def parse_sample_key(key: str) -> tuple[str, str]:
    """(image id, variant key) of a sample key."""
    return _split_last(key, "_", "a sample key ('<image id>_<variant key>')")
