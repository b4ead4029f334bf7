-- Image formats and modes as stored (later stages convert all of them to RGB), and their sizes.
SELECT format, mode, count(*) AS n, min(width) AS min_w, max(width) AS max_w, min(height) AS min_h, max(height) AS max_h
FROM images WHERE status = 'ok' GROUP BY ALL ORDER BY n DESC;
