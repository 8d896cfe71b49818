SELECT bin(time) FROM fleet.trucks
