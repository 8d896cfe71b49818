SELECT truck, count(*) AS readings, avg(measure_value::double) AS mean_speed, max(measure_value::bigint) AS odometer
FROM fleet.trucks
WHERE measure_name IN ('speed', 'odometer')
GROUP BY truck
ORDER BY truck
