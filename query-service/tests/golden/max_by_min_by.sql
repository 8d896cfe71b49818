-- max_by(x, y): x where y is largest; min_by(x, y): x where y is smallest.
SELECT truck, max_by(time, measure_value::double) AS fastest_at, min_by(measure_value::double, time) AS first_speed
FROM fleet.trucks
WHERE measure_name = 'speed'
GROUP BY truck
ORDER BY truck
