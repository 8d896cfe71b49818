-- limit: sql_bytes_max=100
-- This statement is longer than the 100 bytes allowed, so it is refused before it is even parsed.
SELECT 1
