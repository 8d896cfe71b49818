SELECT no_such_column FROM fleet.trucks
