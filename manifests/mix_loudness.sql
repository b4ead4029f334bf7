-- Mixing at a glance: components per mixture, how close the components landed to their targets,
-- how often the peak guard stepped in, and components left out (silent / below the gate).
SELECT variant,
       count(*) AS mixtures,
       round(avg(n_components), 2) AS components_per_mix,
       round(avg(lufs), 2) AS mean_mix_lufs,
       count(*) FILTER (WHERE mix_gain_db < 0) AS peak_guarded,
       round(min(mix_gain_db), 2) AS strongest_guard_db,
       sum(len(list_filter(components, lambda c: NOT c.included))) AS components_left_out,
       round(avg(list_avg(list_transform(list_filter(components, lambda c: c.included), lambda c: c.gain_db))), 2) AS mean_gain_db
FROM mixes WHERE status = 'ok'
GROUP BY variant ORDER BY variant;
