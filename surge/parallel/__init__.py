"""Scale-out over the device mesh: tensor parallel (tensor_parallel, collectives)."""
