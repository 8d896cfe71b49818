SELECT unnest(sequence(from_unixtime(1700000000), from_unixtime(1700000120), 1m)) AS t
