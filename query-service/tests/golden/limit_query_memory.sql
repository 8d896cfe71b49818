-- limit: query_memory_bytes_max=4194304
-- An array of ten million values does not fit in 4 MiB.
SELECT array_length(array_agg(value), 1) FROM generate_series(1, 10000000)
