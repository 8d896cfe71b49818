-- limit: rows_max=100
-- Exactly rows_max rows pass.
SELECT truck, time FROM fleet.trucks
