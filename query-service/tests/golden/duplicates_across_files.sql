-- t2's first five minutes were delivered twice, in two files; each reading counts once.
-- The time range and the truck are pushed down to the store's scan.
SELECT truck, count(*) AS records, count(DISTINCT time) AS minutes
FROM fleet.trucks
WHERE truck IN ('t2') AND time BETWEEN from_unixtime(1700000000) AND from_unixtime(1700000240)
GROUP BY truck
