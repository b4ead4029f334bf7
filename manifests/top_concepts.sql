-- The most frequent sounding objects across all variants (what the audio pool must cover).
SELECT lower(c.object) AS object, count(*) AS n, any_value(c.text) AS example_query
FROM (SELECT unnest(concepts) AS c FROM concepts WHERE status = 'ok')
GROUP BY ALL ORDER BY n DESC LIMIT 20;
