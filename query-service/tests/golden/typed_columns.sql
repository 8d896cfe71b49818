-- Timestream's spelling of the typed value columns, unquoted and quoted.
SELECT truck, measure_name, measure_value::double, "measure_value::bigint", measure_value::varchar, measure_value::boolean
FROM fleet.trucks
WHERE time = from_unixtime(1700000000) AND measure_name <> 'position'
ORDER BY truck, measure_name
