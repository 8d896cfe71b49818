-- max_rows: 5
-- Exactly at the bound passes.
SELECT truck, time FROM fleet.trucks WHERE measure_name = 'speed' AND truck = 't1' ORDER BY time LIMIT 5
