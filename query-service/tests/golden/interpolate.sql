-- Readings every minute, asked for every 30 s from 30 s before the first to 30 s after the third.
WITH series AS (
  SELECT create_time_series(time, measure_value::double) AS speeds
  FROM fleet.trucks
  WHERE measure_name = 'speed' AND truck = 't1' AND time < from_unixtime(1700000180)
), grid AS (
  SELECT sequence(from_unixtime(1699999970), from_unixtime(1700000150), 30s) AS times
)
SELECT interpolate_linear(speeds, times) AS linear,
       interpolate_locf(speeds, times) AS locf,
       interpolate_fill(speeds, times, -1.0) AS filled,
       interpolate_spline_cubic(speeds, times) AS spline
FROM series, grid
