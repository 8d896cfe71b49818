-- bin(time, 5m): Timestream's binning, with an interval literal.
SELECT bin(time, 5m) AS minute5, truck, count(*) AS readings, avg(measure_value::double) AS speed
FROM fleet.trucks
WHERE measure_name = 'speed'
GROUP BY 1, 2
ORDER BY 2, 1
