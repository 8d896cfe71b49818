-- 100 rows where the service allows 50 (rows_max) in one answer.
SELECT * FROM fleet.trucks
