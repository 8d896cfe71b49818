SELECT bin_gapfill(time, 1ms), count(*) FROM fleet.trucks WHERE time >= from_unixtime(0) AND time < from_unixtime(86400) GROUP BY 1
