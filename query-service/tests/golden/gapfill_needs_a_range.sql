SELECT bin_gapfill(time, 1m), count(*) FROM fleet.trucks WHERE time >= from_unixtime(0) GROUP BY 1
