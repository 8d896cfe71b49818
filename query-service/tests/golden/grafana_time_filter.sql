-- What Grafana's Timestream data source sends for a panel: its time filter macro expanded.
SELECT bin(time, 60000ms) AS t, avg(measure_value::double) AS speed
FROM fleet.trucks
WHERE measure_name = 'speed' AND time BETWEEN from_milliseconds(1700000000000) AND from_milliseconds(1700000120000)
GROUP BY 1
ORDER BY 1
