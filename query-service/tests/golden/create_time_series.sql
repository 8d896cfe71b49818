-- A timeseries: rows (time, value) in time order.
SELECT truck, create_time_series(time, measure_value::double) AS speeds
FROM fleet.trucks
WHERE measure_name = 'speed' AND time < from_unixtime(1700000180)
GROUP BY truck
ORDER BY truck
