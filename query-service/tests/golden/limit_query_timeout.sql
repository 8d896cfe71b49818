-- limit: query_timeout_ms=1000
-- A cross join of 10^10 rows, cancelled at the time limit.
SELECT count(*) FROM fleet.trucks a, fleet.trucks b, fleet.trucks c, fleet.trucks d, fleet.trucks e
