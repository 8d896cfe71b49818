-- limit: response_bytes_max=1000
-- The page's columns hold more than 1,000 bytes.
SELECT * FROM fleet.trucks WHERE truck = 't1'
