-- A range wider than 64 bits of nanoseconds: its width wrapped to a negative number, passed the
-- bins bound and filled memory. Now it is refused by the bound like any other too-wide range.
SELECT bin_gapfill(time, 1m), count(*) FROM fleet.trucks
WHERE time >= from_unixtime(-9223372036) AND time <= from_unixtime(9223372036)
GROUP BY 1
