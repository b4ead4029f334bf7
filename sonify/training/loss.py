"""PixArt-alpha's training loss: noise-prediction MSE plus, for learned-sigma models, the variational bound.

PixArt-alpha (like DiT) predicts eps and a variance interpolation v (output channels 2C) and trains
with IDDPM's hybrid loss: MSE(eps) + L_vb, where L_vb is the KL between the true posterior
q(x_{t-1} | x_t, x_0) and the model's p(x_{t-1} | x_t) (the discretised decoder NLL at t = 0),
in bits, with the mean's gradient stopped so the bound only trains the variance. Formulas follow
DiT's `diffusion/gaussian_diffusion.py`.

The per-timestep tables are computed in float64 (as DiT does), cast to float32 once and kept on the
training device (`.to(device)` once at setup): a step only indexes them there, with no host-to-device
copy. Casting before indexing gives the same values as DiT's index-then-cast (the cast is elementwise).
"""

from __future__ import annotations

import math

import torch


class DiffusionLoss:
    def __init__(self, betas: torch.Tensor, device: str | torch.device = "cpu"):
        b = betas.double().cpu()
        alphas = 1.0 - b
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=b.dtype), ac[:-1]])
        post_var = b * (1 - ac_prev) / (1 - ac)
        self.t = {
            "sqrt_recip_ac": torch.sqrt(1 / ac), "sqrt_recipm1_ac": torch.sqrt(1 / ac - 1),
            "coef1": b * torch.sqrt(ac_prev) / (1 - ac), "coef2": (1 - ac_prev) * torch.sqrt(alphas) / (1 - ac),
            "post_logvar": torch.log(torch.cat([post_var[1:2], post_var[1:]])), "log_betas": torch.log(b),
        }
        self.to(device)

    def to(self, device: str | torch.device) -> "DiffusionLoss":
        """The tables as float32 on `device` (once; a step then indexes them where they are)."""
        self.t = {k: v.float().to(device) for k, v in self.t.items()}
        return self

    def _at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.t[name][t].view(-1, *([1] * (like.ndim - 1)))

    def __call__(self, pred: torch.Tensor, noise: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> dict:
        c = noise.shape[1]
        eps = pred[:, :c].float()
        mse = ((eps - noise.float()) ** 2).mean()
        if pred.shape[1] != 2 * c:
            return {"loss": mse, "mse": mse}
        v = pred[:, c:].float()
        min_log, max_log = self._at("post_logvar", t, x_t), self._at("log_betas", t, x_t)
        frac = (v + 1) / 2
        model_logvar = frac * max_log + (1 - frac) * min_log
        eps_frozen = eps.detach()   # the bound trains the variance only
        x0_pred = self._at("sqrt_recip_ac", t, x_t) * x_t - self._at("sqrt_recipm1_ac", t, x_t) * eps_frozen
        model_mean = self._at("coef1", t, x_t) * x0_pred + self._at("coef2", t, x_t) * x_t
        true_mean = self._at("coef1", t, x_t) * x_start + self._at("coef2", t, x_t) * x_t
        true_logvar = min_log
        kl = 0.5 * (-1.0 + model_logvar - true_logvar + torch.exp(true_logvar - model_logvar)
                    + (true_mean - model_mean) ** 2 * torch.exp(-model_logvar))
        kl = kl.mean(dim=list(range(1, kl.ndim))) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start.float(), model_mean, 0.5 * model_logvar)
        nll = nll.mean(dim=list(range(1, nll.ndim))) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl).mean()
        return {"loss": mse + vb, "mse": mse, "vb": vb}


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of x under a Gaussian discretised into 1/255 bins (as in IDDPM/DiT)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))
