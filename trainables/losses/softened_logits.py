import torch
import torch.nn.functional as F


def kd_loss(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch (Hinton et al.)."""
    t = float(temperature)
    log_p_s = F.log_softmax(z_s.float() / t, dim=1)
    log_p_t = F.log_softmax(z_t.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t
