"""Scale-out over the device mesh: data-parallel replicas (data_parallel, placement)."""
