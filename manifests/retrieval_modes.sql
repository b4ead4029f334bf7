-- The paper's argument for SSR + dynamic threshold, per retrieval mode: how many distinct chunks are
-- used, how concentrated the reuse is, and how large the eligible pools are.
-- Needs stages.retrieve.ablation_modes (e.g. [raw, argmax, softmax]) for the other modes.
WITH all_matches AS (
    SELECT mode, chunk_id, n_eligible FROM matches WHERE status = 'ok'
    UNION ALL
    SELECT mode, chunk_id, n_eligible FROM match_ablations WHERE status = 'ok'
), reuse AS (
    SELECT mode, chunk_id, count(*) AS uses FROM all_matches GROUP BY ALL
)
SELECT r.mode,
       sum(r.uses) AS matches,
       count(*) AS distinct_chunks,
       round(count(*) / sum(r.uses), 3) AS distinct_ratio,
       max(r.uses) AS most_reused,
       list(r.uses ORDER BY r.uses DESC)[1:5] AS top5_reuse,
       histogram(r.uses) AS reuse_histogram,   -- {times used: number of chunks}
       any_value(p.mean_pool) AS mean_eligible_pool,
       any_value(p.median_pool) AS median_eligible_pool
FROM reuse r
JOIN (SELECT mode, round(avg(n_eligible), 2) AS mean_pool, median(n_eligible) AS median_pool
      FROM all_matches GROUP BY mode) p USING (mode)
GROUP BY r.mode ORDER BY r.mode;
