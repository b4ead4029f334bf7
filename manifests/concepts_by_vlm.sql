-- Per VLM variant: replies, parsed, parse errors, concepts per image, and lists cut to max_concepts.
SELECT variant, origin,
       count(*) AS rows,
       count(*) FILTER (WHERE status = 'ok') AS parsed,
       count(*) FILTER (WHERE error LIKE 'parse_error:%') AS parse_errors,
       round(avg(n_concepts) FILTER (WHERE status = 'ok'), 2) AS concepts_per_image,
       count(*) FILTER (WHERE items_found > n_concepts) AS lists_cut
FROM concepts GROUP BY ALL ORDER BY variant;
