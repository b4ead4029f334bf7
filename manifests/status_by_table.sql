-- Where every row of every table went: per table, in pipeline order, the rows that passed on (ok),
-- were dropped by a decision (the filter's, with its reason) or became error rows (the reason token
-- of `error`). Per table, sum(n) is its row count. Needs a run where every stage has run.
-- python -m sonify.query run=demo --file manifests/status_by_table.sql
WITH outcomes AS (
    SELECT 1 AS o, 'images' AS "table", status AS outcome, split_part(coalesce(error, ''), ':', 1) AS reason, count(*) AS n FROM images GROUP BY ALL
    UNION ALL
    SELECT 2, 'audio_files', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM audio_files GROUP BY ALL
    UNION ALL
    SELECT 3, 'audio_chunks', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM audio_chunks GROUP BY ALL
    UNION ALL
    SELECT 4, 'concepts', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM concepts GROUP BY ALL
    UNION ALL
    SELECT 5, 'captions', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM captions GROUP BY ALL
    UNION ALL
    SELECT 6, 'kept_images',
           CASE WHEN status <> 'ok' THEN status WHEN kept THEN 'ok' ELSE 'dropped' END,
           CASE WHEN status <> 'ok' THEN split_part(coalesce(error, ''), ':', 1) WHEN kept THEN '' ELSE reason END,
           count(*) FROM kept_images GROUP BY ALL
    UNION ALL
    SELECT 7, 'audio_embeddings', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM audio_embeddings GROUP BY ALL
    UNION ALL
    SELECT 8, 'concept_embeddings', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM concept_embeddings GROUP BY ALL
    UNION ALL
    SELECT 9, 'matches', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM matches GROUP BY ALL
    UNION ALL
    SELECT 10, 'match_ablations', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM match_ablations GROUP BY ALL
    UNION ALL
    SELECT 11, 'mixes', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM mixes GROUP BY ALL
    UNION ALL
    SELECT 12, 'audio_features', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM audio_features GROUP BY ALL
    UNION ALL
    SELECT 13, 'image_latents', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM image_latents GROUP BY ALL
    UNION ALL
    SELECT 14, 'shard_index', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM shard_index GROUP BY ALL
)
SELECT "table", outcome, reason, n FROM outcomes ORDER BY o, outcome = 'error', outcome = 'dropped', n DESC, reason;
