-- Timestream's form: one row per point of each truck's timeseries.
WITH s AS (
  SELECT truck, create_time_series(time, measure_value::double) AS speeds
  FROM fleet.trucks
  WHERE measure_name = 'speed' AND time < from_unixtime(1700000180)
  GROUP BY truck
)
SELECT s.truck, u.time, u.value
FROM s CROSS JOIN UNNEST(s.speeds) AS u(time, value)
ORDER BY s.truck, u.time
