"""Static sparsity: mask initialisation, enforcement, pruning schedules, sparse checkpoints."""
from trainables.sparsity.layers import maskable_parameters, masked_density, SparsityError
from trainables.sparsity.allocation import layer_densities, INIT_METHODS
from trainables.sparsity.init import init_masks, prune_by_magnitude
from trainables.sparsity.enforce import apply_masks, get_masks, mask_weights_, check_density
from trainables.sparsity.schedule import density_at_step, pruning_plan, SCHEDULES
from trainables.sparsity.checkpoint import save_sparse, load_sparse, to_dense_state_dict

__all__ = [
    "maskable_parameters", "masked_density", "SparsityError", "layer_densities", "INIT_METHODS",
    "init_masks", "prune_by_magnitude", "apply_masks", "get_masks", "mask_weights_", "check_density",
    "density_at_step", "pruning_plan", "SCHEDULES", "save_sparse", "load_sparse", "to_dense_state_dict",
]
