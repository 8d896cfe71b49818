-- limit: query_memory_bytes_max=10000000
-- limit: rows_max=100000
-- The answer's own rows count against the query's memory: 20,000 rows of 1,000 bytes (20 MB)
-- pass a 10 MB limit and are refused, though no sort or join ever held them.
SELECT repeat('x', 1000) AS filler FROM range(20000)
