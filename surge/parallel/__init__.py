"""Scale-out over the device mesh: tensor parallel (tensor_parallel, collectives) within a replica, and
data-parallel replicas (data_parallel, placement), one per mesh row."""
