SELECT * FROM fleet.no_such_table
