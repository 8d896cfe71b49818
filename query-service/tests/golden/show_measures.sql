SHOW MEASURES FROM fleet.trucks LIKE 's%'
