-- A timeseries back to rows: unnest(series) gives one row per point (time, value).
-- (Timestream's FROM … CROSS JOIN UNNEST(series) AS t(time, value) is not supported yet:
-- DataFusion 55 has no lateral UNNEST in FROM.)
WITH series AS (
  SELECT truck, create_time_series(time, measure_value::double) AS speeds
  FROM fleet.trucks
  WHERE measure_name = 'speed' AND time < from_unixtime(1700000120)
  GROUP BY truck
), points AS (
  SELECT truck, unnest(speeds) AS point FROM series
)
SELECT truck, point['time'] AS time, point['value'] AS speed
FROM points
ORDER BY truck, time
