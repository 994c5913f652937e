"""Fréchet distance between two Gaussians, the formula behind FID and every ``fd_*`` metric.

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁ Σ₂)^½)

clean-fid (and pytorch-fid, and TF-GAN) evaluate the last term as the trace of
``scipy.linalg.sqrtm(Σ₁ Σ₂, disp=False)``. ``disp`` is gone from current SciPy, and the
non-symmetric square root is slow (≈11 s at D = 2048 on 2 cores) and can return complex noise on
nearly singular inputs. Here the same trace comes from a symmetric eigenproblem: Σ₁Σ₂ is similar
to the positive semi-definite matrix M = Σ₁^½ Σ₂ Σ₁^½ (conjugate by Σ₁^½), so

    Tr((Σ₁ Σ₂)^½) = Σᵢ √λᵢ(M),

with Σ₁^½ from ``eigh``. Eigenvalues at round-off level (|λ| ≤ D·ε·λ_max) count as 0, so rank-deficient
covariances (fewer samples than features) add no √noise terms. Everything is float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["frechet_distance", "trace_sqrt_product"]


def _clip_roundoff(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off noise (|λ| ≤ D·ε·λ_max, negative ones too) set to 0."""
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 0.0)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(_clip_roundoff(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ₁ Σ₂)^½) for symmetric PSD Σ₁, Σ₂ [D, D], via eigenvalues of Σ₁^½ Σ₂ Σ₁^½."""
    root1 = _psd_sqrt(sigma1)
    m = root1 @ sigma2 @ root1
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(_clip_roundoff(lam)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein²) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂).

    Args:
        mu1: [D] mean of the first set (generated samples, by clean-fid's convention).
        sigma1: [D, D] its covariance.
        mu2: [D] mean of the second set (the reference statistics).
        sigma2: [D, D] its covariance.

    Returns:
        The squared distance d² as a Python float (what FID reports).

    Raises:
        ValueError: on mismatched shapes or non-finite inputs.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} has non-finite entries")
    sigma1, sigma2 = 0.5 * (sigma1 + sigma1.T), 0.5 * (sigma2 + sigma2.T)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
