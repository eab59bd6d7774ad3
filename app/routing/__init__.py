"""Keys and partitions: the key partitioner, misplaced-record detection, repartitioning."""
