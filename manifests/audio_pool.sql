-- The retrieval pool per audio source: files, usable chunks, hours, and the native sample rates seen.
SELECT f.source,
       count(DISTINCT f.id) AS files,
       count(c.id) FILTER (WHERE c.status = 'ok') AS usable_chunks,
       round(sum(c.duration) FILTER (WHERE c.status = 'ok') / 3600, 4) AS hours,
       list_sort(list_distinct(list(f.sample_rate))) AS sample_rates
FROM audio_files f LEFT JOIN audio_chunks c ON c.file_id = f.id
WHERE f.status = 'ok'
GROUP BY f.source ORDER BY f.source;
