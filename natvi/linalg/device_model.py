"""A first-order model of how long a thermodynamic (analog OU) co-processor takes.

The device integrates ``dx = −(A x − b) dt + sqrt(2 κ0) dW`` in physical time, with its
dynamics' unit of time the RC constant ``τ``. Wall-clock on the device is then

    seconds = k · t · τ  +  bits · (entries loaded + entries read back) / bandwidth

for ``k`` right-hand sides run one after another for analog time ``t`` (in units of ``τ``),
with ``A``'s describing numbers (``n²`` for a dense matrix, ``n r + n`` for
``λ I + U Uᵀ``), ``b`` and ``x0`` loaded once per system and the results digitised on the way
back. Defaults are those of Thermodynamic Natural Gradient Descent (Donatella et al. 2024):
``τ = 1 µs``, 16-bit numbers, 50 Gb/s.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeviceModel"]


@dataclass(frozen=True)
class DeviceModel:
    """Device parameters: ``tau`` seconds per unit of analog time, ``bits`` per number,
    ``bandwidth`` in bits per second.

    Example:
        >>> DeviceModel().seconds(analog_time=20.0, entries_in=200 * 200 + 200, entries_out=200)
    """

    tau: float = 1e-6
    bits: int = 16
    bandwidth: float = 50e9

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be positive seconds (1e-6 for 1 µs), got {self.tau!r}.")
        if not (isinstance(self.bits, int) and self.bits > 0):
            raise ValueError(f"bits must be a positive int (e.g. 16), got {self.bits!r}.")
        if not self.bandwidth > 0:
            raise ValueError(
                f"bandwidth must be positive bits/s (e.g. 50e9), got {self.bandwidth!r}."
            )

    def transfer_seconds(self, entries: int) -> float:
        """Seconds to move ``entries`` numbers over the link."""
        return self.bits * entries / self.bandwidth

    def seconds(
        self, analog_time: float, entries_in: int, entries_out: int, runs: int = 1
    ) -> float:
        """Modelled device seconds: ``runs`` analog runs of length ``analog_time`` (in τ) plus
        loading ``entries_in`` and reading back ``entries_out`` numbers."""
        return runs * analog_time * self.tau + self.transfer_seconds(entries_in + entries_out)
