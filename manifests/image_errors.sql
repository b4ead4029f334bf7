-- Every image that failed ingest, with the reason (corrupt, truncated, empty, decompression_bomb, ...).
SELECT source, uri, split_part(error, ':', 1) AS reason, error
FROM images WHERE status = 'error' ORDER BY reason, uri;
