-- t1's status at minute 9 was replaced by version 2 in a later file: only the replacement shows.
SELECT truck, time, measure_value::varchar, version
FROM fleet.trucks
WHERE measure_name = 'status' AND truck = 't1' AND time >= from_unixtime(1700000480)
ORDER BY time
