"""Static sparsity: mask initialisation, enforcement, pruning schedules, sparse checkpoints."""
from trainables.sparsity.allocation import INIT_METHODS, allocate_layer_densities
from trainables.sparsity.enforce import apply_masks, check_density, get_masks, mask_weights_
from trainables.sparsity.init import init_masks, prune_by_magnitude
from trainables.sparsity.layers import SparsityError, maskable_parameters
from trainables.sparsity.schedule import SCHEDULES, density_at_step, pruning_plan
from trainables.sparsity.sparse_checkpoint import load_sparse, save_sparse, to_dense_state_dict

__all__ = [
    "maskable_parameters", "SparsityError", "allocate_layer_densities", "INIT_METHODS",
    "init_masks", "prune_by_magnitude", "apply_masks", "get_masks", "mask_weights_", "check_density",
    "density_at_step", "pruning_plan", "SCHEDULES", "save_sparse", "load_sparse", "to_dense_state_dict",
]
