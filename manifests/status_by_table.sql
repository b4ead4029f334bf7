-- Where every row of every table went: per table, in pipeline order, the rows that passed on (ok),
-- were dropped by a decision (the filter's, with its reason) or became error rows (the reason token
-- of `error`). Per table, sum(n) is its row count. Needs a run where every stage has run.
-- python -m sonify.query run=demo --file manifests/status_by_table.sql
-- One table's outcomes: its status, and the reason token of `error` ('' on ok rows).
CREATE OR REPLACE TEMP MACRO outcomes(o, t) AS TABLE
    SELECT o AS o, t AS "table", status AS outcome, split_part(coalesce(error, ''), ':', 1) AS reason, count(*) AS n
    FROM query_table(t) GROUP BY ALL;
WITH outcomes AS (
    FROM outcomes(1, 'images') UNION ALL FROM outcomes(2, 'audio_files') UNION ALL FROM outcomes(3, 'audio_chunks')
    UNION ALL FROM outcomes(4, 'concepts') UNION ALL FROM outcomes(5, 'captions')
    UNION ALL   -- the filter's decision: ok rows it did not keep are 'dropped', with its reason
    SELECT 6, 'kept_images',
           CASE WHEN status <> 'ok' THEN status WHEN kept THEN 'ok' ELSE 'dropped' END,
           CASE WHEN status <> 'ok' THEN split_part(coalesce(error, ''), ':', 1) WHEN kept THEN '' ELSE reason END,
           count(*) FROM kept_images GROUP BY ALL
    UNION ALL FROM outcomes(7, 'audio_embeddings') UNION ALL FROM outcomes(8, 'concept_embeddings')
    UNION ALL FROM outcomes(9, 'matches') UNION ALL FROM outcomes(10, 'match_ablations') UNION ALL FROM outcomes(11, 'mixes')
    UNION ALL FROM outcomes(12, 'audio_features') UNION ALL FROM outcomes(13, 'image_latents')
    UNION ALL FROM outcomes(14, 'shard_index')
)
SELECT "table", outcome, reason, n FROM outcomes ORDER BY o, outcome = 'error', outcome = 'dropped', n DESC, reason;
