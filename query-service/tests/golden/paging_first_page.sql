-- max_rows: 3
-- More rows than a page: the first page (the rest comes with next_token; tests/api.rs pages through).
SELECT truck, measure_name, time FROM fleet.trucks WHERE truck = 't1' ORDER BY truck, measure_name, time
