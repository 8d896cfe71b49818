-- No group column but the bins: one row per 5 minutes of the range, 0 where nothing fell.
SELECT bin_gapfill(time, 5m) AS bin, count(*) AS readings
FROM fleet.trucks
WHERE measure_name = 'speed' AND time BETWEEN from_unixtime(1699999200) AND from_unixtime(1700001000)
GROUP BY 1
ORDER BY 1
