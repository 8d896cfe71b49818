-- Every minute of the range, for each truck: empty minutes are null, carried forward (locf), or
-- interpolated. Minutes 3 and 4 of the data are left out; the range starts two minutes before
-- the first reading and ends two after the last, where locf carries on and interpolate stops.
SELECT bin_gapfill(time, 1m) AS minute, truck,
       avg(measure_value::double) AS speed,
       locf(avg(measure_value::double)) AS last_speed,
       interpolate(avg(measure_value::double)) AS smooth
FROM fleet.trucks
WHERE measure_name = 'speed' AND measure_value::double NOT IN (4.5, 6.0, 104.5, 106.0)
  AND time >= from_unixtime(1699999880) AND time < from_unixtime(1700000660)
GROUP BY 1, 2
ORDER BY 2, 1
