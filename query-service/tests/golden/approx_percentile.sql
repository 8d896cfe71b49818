SELECT truck, approx_percentile(measure_value::double, 0.5) AS median_speed, approx_percentile(measure_value::double, 0.9) AS p90_speed
FROM fleet.trucks
WHERE measure_name = 'speed'
GROUP BY truck
ORDER BY truck
