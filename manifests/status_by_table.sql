-- Where every row went: counts by table, status and error reason.
-- python -m sonify.query run=runs/demo --file manifests/status_by_table.sql
SELECT 'images' AS "table", status, split_part(coalesce(error, ''), ':', 1) AS reason, count(*) AS n FROM images GROUP BY ALL
UNION ALL
SELECT 'audio_files', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM audio_files GROUP BY ALL
UNION ALL
SELECT 'audio_chunks', status, split_part(coalesce(error, ''), ':', 1), count(*) FROM audio_chunks GROUP BY ALL
ORDER BY 1, 2 DESC, 4 DESC;
