"""What each sampler needs from a noise path, in one place, and the check made before any score call.

A Gaussian path (:mod:`models.paths`) gives α_t, σ_t, λ_t, f(t), g²(t) everywhere on its time domain,
but not every sampler can run on every path:

* ``tables`` — score_sde's discrete tables (``discretize``: reverse diffusion's 'table', the
  Langevin corrector's α_i, the 'reverse_diffusion' final denoise) exist on VE, VP and sub-VP only;
  ``ancestral`` (ancestral sampling's 'table') on VE and VP only;
* ``ve`` — NCSNv2's annealed Langevin dynamics is written for the VE perturbation σ_i;
* ``vp`` — DDIM's ``alphas='table'`` is the discrete DDPM table of a VP SDE;
* ``timesteps`` — diffusers' timestep spacings need the model's trained table (a tabulated ᾱ);
* ``unit_time`` — the time shift maps [0, 1] to itself (flow, cosine and tabulated paths);
* ``alpha_T`` — α_T > 0: the sampler evaluates at T something that is infinite where α_T = 0
  (flow matching at T = 1): λ_T or σ_ve(T) = σ_T/α_T (grids in σ or λ, EDM, LMS, iPNDM, singlestep
  and noise-prediction DPM-Solver, UniPC, adaptive DPM-Solver, SDE-DPM-Solver++), f(T) and g²(T) (the
  reverse-SDE samplers), x̂₀ = (x − σ ε̂)/α (DDIM), or the transition a = α_T/α_next (reverse
  diffusion and ancestral sampling with ``discretization='transition'``).

Where α_T = 0 these start from pure noise: the probability-flow samplers in t (``pf_euler``,
``pf_heun``, ``scipy_ode``, ``torchdiffeq_ode``) through the velocity α̇ x̂₀ + σ̇ ε̂
(:func:`solvers.ode.velocity`), and DPM-Solver++ multistep with data prediction on a grid in t
(schedule 'uniform' or 'quadratic'), whose first step from λ = −inf is the DDIM step
x = (σ_next/σ_T) x_T + α_next x̂₀ (:func:`solvers.exp_integrator.exp_integrator_step`).

Every sampler declares its ``needs`` (keys of :data:`NEEDS`; part of :data:`solvers.base.PROTOCOL`):
a method for its own reasons, its fixed grid ``alpha_T`` when the schedule is in σ_ve or λ
(:attr:`solvers.fixed.FixedSteps.needs`), composed by :class:`solvers.sampler.Sampler`.
:func:`refusal` says why a sampler cannot run on a path; :func:`check` raises ValueError with it,
before any score call (bench/grid.py calls it when a grid is loaded; ``Sampler.sample`` before
solving).
"""

from __future__ import annotations

from solvers.denoiser import alpha_vanishes_at_T

__all__ = ["NEEDS", "T_SCHEDULES", "needs", "refusal", "check"]

T_SCHEDULES = ("uniform", "quadratic")  # grids defined in t (the others are in σ_ve or λ)

# What each need means, in the words of the refusal.
NEEDS = {
    "tables": "score_sde's discrete tables (VE, VP, sub-VP)",
    "ancestral": "score_sde's ancestral step (VE, VP)",
    "ve": "a VE path (noise levels σ_i)",
    "vp": "a VP path (the discrete DDPM table)",
    "alpha_T": "α_T > 0 (it evaluates λ, σ/α, f or g² at T, infinite where α_T = 0)",
    "timesteps": "a discrete-time model's trained timesteps (a tabulated ᾱ: diffusers' spacings)",
    "unit_time": "a path whose time runs in [0, 1] (the time shift)",
}


def needs(sampler) -> tuple[str, ...]:
    """The needs (keys of ``NEEDS``) a configured sampler declares, without repeats."""
    return tuple(dict.fromkeys(sampler.needs))


def _has(sde, need: str) -> bool:
    if need == "tables":
        return callable(getattr(sde, "discretize", None)) and callable(getattr(sde, "langevin_alpha", None))
    if need == "ancestral":
        return callable(getattr(sde, "ancestral", None))
    if need == "ve":
        return sde.kind == "ve"
    if need == "vp":
        return sde.kind == "vp"
    if need == "alpha_T":
        return not alpha_vanishes_at_T(sde)
    if need == "timesteps":
        return getattr(sde, "alphas_cumprod", None) is not None
    if need == "unit_time":
        return getattr(sde, "t_max", None) == 1.0 and float(sde.T) <= 1.0
    raise KeyError(need)


def refusal(sampler, sde) -> str | None:
    """Why ``sampler`` cannot run on the path ``sde`` (with its T and eps), or None: a need it lacks, or
    the reason the method's own optional ``refusal(sde)`` gives (options that must fit the path's
    range, as Restart's interval)."""
    missing = [n for n in needs(sampler) if not _has(sde, n)]
    composed = hasattr(sampler, "controller")  # a solvers.sampler.Sampler: named by its method
    method = sampler.method if composed else sampler
    if not missing:  # the grid's own check against the path (a σ table's range), then the method's
        for own in (getattr(sampler.controller, "path_refusal", None) if composed else None,
                    getattr(method, "refusal", None)):
            why = own(sde) if callable(own) else None
            if why is not None:
                return why
        return None
    why = "; ".join(NEEDS[n] for n in missing)
    hint = ""
    if "alpha_T" in missing:
        hint = f"; run it with T below {float(sde.T):g}"
        if composed and "alpha_T" not in method.needs and "alpha_T" in sampler.controller.needs:
            hint += ", or schedule 'uniform'"  # only its grid in σ or λ needs α_T > 0
    return f"{type(method).__name__} cannot run on the {sde.kind!r} path with T={float(sde.T):g}: it needs {why}{hint}"


def check(sampler, sde) -> None:
    """Raise ValueError naming the reason if ``sampler`` cannot run on ``sde`` (no score call is made)."""
    why = refusal(sampler, sde)
    if why is not None:
        raise ValueError(why)
