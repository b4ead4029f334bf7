-- Chunks per file and the zero padding of each file's last chunk (a 34 s file gives 7 chunks, 1 s padded).
SELECT f.uri, f.sample_rate, round(f.duration, 2) AS seconds, f.num_chunks,
       round(max(c.padding), 2) AS last_chunk_padding_s
FROM audio_files f JOIN audio_chunks c ON c.file_id = f.id
GROUP BY ALL ORDER BY seconds DESC;
