-- Training shards: samples and bytes per split and shard, and images per split (each image on one side).
SELECT split, count(DISTINCT shard) AS shards, count(*) AS samples, count(DISTINCT image_id) AS images,
       round(sum(latent_bytes + ast_bytes + json_bytes + jpg_bytes + flac_bytes) / 2^20, 2) AS payload_mib,
       round(avg(ast_bytes)) AS mean_ast_bytes, round(avg(latent_bytes)) AS mean_latent_bytes
FROM shard_index WHERE status = 'ok'
GROUP BY split ORDER BY split DESC;
