-- ago(3650d) and now() are timestamps like the time column.
SELECT count(*) AS readings, ago(1h) < now() AS past_before_present, now() - ago(90s) AS ninety_seconds
FROM fleet.trucks
WHERE time > ago(3650d) AND time <= now() AND measure_name = 'speed'
