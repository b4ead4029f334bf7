-- Why images were kept or dropped, with an example caption for each keyword hit.
SELECT kept, coalesce(reason, 'kept') AS reason, count(*) AS images, any_value(caption_hits[1]) AS example_caption
FROM kept_images GROUP BY ALL ORDER BY images DESC;
