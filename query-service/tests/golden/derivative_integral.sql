-- t1's speed rises 1.5 a minute; t2's odometer 7 a minute.
WITH series AS (
  SELECT truck, measure_name, create_time_series(time, coalesce(measure_value::double, CAST(measure_value::bigint AS DOUBLE))) AS s
  FROM fleet.trucks
  WHERE measure_name IN ('speed', 'odometer') AND time < from_unixtime(1700000180)
  GROUP BY truck, measure_name
)
SELECT truck, measure_name,
       derivative_linear(s, 1m) AS per_minute,
       non_negative_derivative_linear(s, 1h) AS per_hour,
       integral_trapezoidal(s, 1m) AS area_minutes,
       integral_trapezoidal(s) AS area_seconds
FROM series
ORDER BY truck, measure_name
