-- A MULTI record's measures are columns of their own.
SELECT truck, lat, lon FROM fleet.trucks WHERE measure_name = 'position' AND truck = 't1' ORDER BY time LIMIT 3
