"""Counting every network of a run apart: one :class:`Tally` per loaded model stack, one entry per
network name.

A run can call several networks: the denoiser (whose calls are the NFE the solver's
:class:`~models.score.CountingScore` counts), a guide network (autoguidance), a classifier (forward
and backward), a text encoder and a VAE decoder. Each is wrapped by :class:`CountedNetwork`, which
adds one *call* (a batched forward) and its *rows* (samples through it) to the tally under its name;
:class:`CountedModel` does the same one level up, for a score model (any model the harness loads, the
exact mixtures included): one call of its score, ``data_and_noise`` or ``data_noise_and_variance`` is one
forward of the named network. The executor reads :meth:`Tally.snapshot` before and after a batch and
records the difference (:meth:`Tally.since`) per network. A CFG step that runs the conditional and
unconditional branches as one forward of 2B rows is one call of 2B rows: the record keeps both numbers,
so either convention (guided denoiser evaluations, or network forwards per sample) can be read from it.
"""

from __future__ import annotations

from torch import nn

__all__ = ["NETWORKS", "Tally", "CountedNetwork", "CountedModel"]

# The network names a record may carry, in the order reports list them.
NETWORKS = ("denoiser", "guide", "classifier", "classifier_backward", "text_encoder", "vae_decoder")


class Tally:
    """Calls and rows per network name (names from :data:`NETWORKS`)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, name: str, rows: int, calls: int = 1) -> None:
        if name not in NETWORKS:
            raise ValueError(f"Tally: unknown network name {name!r}; expected one of: {', '.join(NETWORKS)}")
        entry = self.counts.setdefault(name, {"calls": 0, "rows": 0})
        entry["calls"] += int(calls)
        entry["rows"] += int(rows)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {name: dict(entry) for name, entry in self.counts.items()}

    def since(self, before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """Calls and rows of each network since ``before`` (a :meth:`snapshot`), networks not called left out."""
        out = {}
        for name, entry in self.counts.items():
            old = before.get(name, {"calls": 0, "rows": 0})
            diff = {k: entry[k] - old[k] for k in ("calls", "rows")}
            if diff["calls"]:
                out[name] = diff
        return out


class CountedNetwork(nn.Module):
    """``net`` whose every forward adds one call of ``x.shape[0]`` rows (the first argument's batch size)
    to ``tally`` under ``name``; otherwise the same module (parameters, dtype, device)."""

    def __init__(self, net: nn.Module, tally: Tally, name: str) -> None:
        super().__init__()
        if name not in NETWORKS:
            raise ValueError(f"CountedNetwork: unknown network name {name!r}; expected one of: {', '.join(NETWORKS)}")
        self.net, self.tally, self.name = net, tally, name

    def forward(self, x, *args, **kwargs):
        self.tally.add(self.name, rows=int(x.shape[0]))
        return self.net(x, *args, **kwargs)


class CountedModel:
    """A score model whose every evaluation (``__call__``, ``data_and_noise``, ``data_noise_and_variance``:
    each one network forward) adds one call of ``x.shape[0]`` rows to ``tally`` under ``name``.

    It is otherwise the model: attributes are forwarded, ``data_and_noise`` and
    ``data_noise_and_variance`` exist exactly where the model has them, and a
    :func:`~models.score.conditioned` view counts into the same tally. Placed outside any batch
    splitting (:class:`models.accel.ChunkedScore`), so a call is one logical batched forward.
    """

    _COUNTED = ("data_and_noise", "data_noise_and_variance")

    def __init__(self, model, tally: Tally, name: str) -> None:
        if name not in NETWORKS:
            raise ValueError(f"CountedModel: unknown network name {name!r}; expected one of: {', '.join(NETWORKS)}")
        self.model, self.tally, self.name = model, tally, name
        self.sde, self.shape, self.data_range = model.sde, model.shape, model.data_range

    def __call__(self, x, t):
        self.tally.add(self.name, rows=int(x.shape[0]))
        return self.model(x, t)

    def conditioned(self, condition) -> CountedModel:
        from models.score import conditioned

        return CountedModel(conditioned(self.model, condition), self.tally, self.name)

    def __getattr__(self, name: str):
        if name in ("model", "tally", "name"):
            raise AttributeError(name)
        inner = getattr(self.model, name)
        if name not in self._COUNTED:
            return inner

        def counted(x, t, *args, **kwargs):
            self.tally.add(self.name, rows=int(x.shape[0]))
            return inner(x, t, *args, **kwargs)

        return counted
