-- limit: response_bytes_max=1000
-- The page's Arrow data (50 timestamps, 400 bytes) fits the bound; as JSON text (about 30 bytes
-- a row) it does not, and rendering stops at the bound.
SELECT time FROM fleet.trucks WHERE truck = 't1'
