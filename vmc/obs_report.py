"""Reblocked summaries of the observables stored in an evaluation (no JAX, no files).

Input: the per-step columns that `vmc.observables.make_observables` produces (as stored in
an eval.h5 group); output: plain dicts for summary.json and `vmc analyze`, every value with
a reblocked error bar (vmc.reblock), in atomic units (⟨S²⟩ dimensionless, dipole e·bohr and
debye, forces hartree/bohr, density electrons/bohr³). A step whose mean is not finite (no
walker left) is left out, as for the energy.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from vmc.errors import InputError
from vmc.reblock import MIN_SAMPLES, reblock

OBSERVABLES = ("s2", "dipole", "density", "forces")
AU_TO_DEBYE = 2.541746   # 1 e·bohr in debye (MATH.md §9)
# the eval.h5 columns each observable writes
COLUMNS = {"s2": ("s2", "s2_nonfinite"), "dipole": ("dipole", "dipole_nonfinite"),
           "forces": ("force_hf", "force_zv", "force_pulay", "forces_nonfinite"),
           "density": ("density_radial", "density_radial_outside", "density_axial",
                       "density_axial_outside")}


def parse_observables(value, field: str = "eval.observables") -> tuple[str, ...]:
    """Validate a list (or comma-separated string) of observable names.

    Returns:
      the names in OBSERVABLES order, without repeats.
    Raises:
      InputError: an unknown name (one line naming `field` and the valid names).
    """
    if isinstance(value, str):
        value = [v for v in (s.strip() for s in value.split(",")) if v]
    names = [str(v) for v in value]
    bad = [n for n in names if n not in OBSERVABLES]
    if bad:
        raise InputError(f"{field}: unknown observable {bad[0]!r}; valid: "
                         f"{', '.join(OBSERVABLES)} (comma-separated)")
    return tuple(n for n in OBSERVABLES if n in names)


def check_forces_supported(cfg) -> None:
    """Forces need ∂V/∂R_I of every term of the Hamiltonian: refuse pseudopotentials.

    Args:
      cfg: the run's `vmc.config.Config` (its `hamiltonian.ecp`).
    Raises:
      InputError: the run uses an ECP (`hamiltonian.ecp`), whose nuclear derivative is not in.
    """
    if getattr(getattr(cfg, "hamiltonian", None), "ecp", None):
        raise InputError("eval.observables: forces are not available with pseudopotentials "
                         "(hamiltonian.ecp) until the ECP's own derivative is in; valid: s2, "
                         "dipole, density")


def reblock_series(x) -> Optional[dict]:
    """{mean, stderr, tau, plateau} of the finite steps of a (steps,) series, None if fewer
    than MIN_SAMPLES are finite."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size < MIN_SAMPLES:
        return None
    r = reblock(x)
    return {"mean": r.mean, "stderr": r.stderr, "tau": r.tau, "plateau": r.plateau}


def reblock_columns(a) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, reblocked error and plateau flag of each component of a (steps, ...) array:
    three arrays of shape a.shape[1:] (NaN and False where fewer than MIN_SAMPLES steps are
    finite). Without a plateau the error is a lower bound (`vmc.reblock`)."""
    a = np.asarray(a, np.float64)
    flat = a.reshape(a.shape[0], -1)
    mean, err = np.full(flat.shape[1], np.nan), np.full(flat.shape[1], np.nan)
    plateau = np.zeros(flat.shape[1], bool)
    for k in range(flat.shape[1]):
        r = reblock_series(flat[:, k])
        if r is not None:
            mean[k], err[k], plateau[k] = r["mean"], r["stderr"], r["plateau"]
    shape = a.shape[1:]
    return mean.reshape(shape), err.reshape(shape), plateau.reshape(shape)


def _nonfinite(cols, name, walkers) -> dict:
    bad = int(np.sum(cols[name])) if name in cols else 0
    total = walkers * len(next(iter(cols.values()))) if walkers else 0
    return {"nonfinite_samples": bad, "nonfinite_fraction": bad / total if total else 0.0}


def _lists(mean, err, plateau) -> dict:
    return {"mean": np.asarray(mean).tolist(), "stderr": np.asarray(err).tolist(),
            "plateau": np.asarray(plateau, bool).tolist()}


def shell_volumes(edges) -> np.ndarray:
    """(n_bins,) volumes 4π/3 (r_{k+1}³ − r_k³) of spherical shells, bohr³."""
    e = np.asarray(edges, np.float64)
    return 4.0 * np.pi / 3.0 * (e[1:] ** 3 - e[:-1] ** 3)


def dipole_norm(d, mean) -> Optional[dict]:
    """|⟨d⟩| of a (steps, 3) dipole series and its error: {mean, stderr, tau, plateau}, or
    None with fewer than MIN_SAMPLES finite steps.

    The norm of the mean vector, not the mean of the per-step norms (each step's d averages
    only n_w walkers, so |d_t| is biased upwards by that noise: ~0.1 e·bohr at 256 walkers
    for a zero dipole). Its error is the reblocked error of the projection d_t · u onto
    u = ⟨d⟩/|⟨d⟩| (first order in the noise, correlations between components included);
    when |⟨d⟩| is within its error of 0 the norm is that noise (≈ √3 σ), no more.
    """
    d = np.asarray(d, np.float64)
    d = d[np.all(np.isfinite(d), axis=1)]
    norm = float(np.linalg.norm(mean))
    if d.shape[0] < MIN_SAMPLES or not np.isfinite(norm):
        return None
    u = np.asarray(mean, np.float64) / norm if norm > 0 else np.array([1.0, 0.0, 0.0])
    r = reblock_series(d @ u)
    return {**r, "mean": norm}


def summarize_observables(cols: dict, attrs: dict) -> dict:
    """Reblocked observables of one evaluation, for summary.json / `vmc analyze`.

    Args:
      cols: eval.h5 group columns (steps, ...) (other columns are ignored).
      attrs: group attributes; uses 'walkers', 'density_rmax', 'density_bins'.
    Returns:
      {'s2': {mean, stderr, tau, plateau, nonfinite_*}, 'dipole': {au: {mean (3,), stderr},
      debye: {...}, norm_au, norm_debye, ...}, 'forces': {hf, hf_zb, zv, zv_zb: {mean
      (n_atoms, 3), stderr}, unit}, 'density': {radial_edges, radial (ρ, e/bohr³) {mean,
      stderr}, radial_outside_share, axial_edges, axial (electrons per walker per bohr)
      {mean, stderr}, axial_outside_share}} for the observables present.
    Raises:
      InputError: a column with fewer than 16 finite steps.
    """
    walkers = int(attrs.get("walkers", 0) or 0)
    out = {}
    if "s2" in cols:
        r = reblock_series(cols["s2"])
        if r is None:
            raise InputError("eval: s2 has fewer than 16 finite steps")
        out["s2"] = {**r, **_nonfinite(cols, "s2_nonfinite", walkers)}
    if "dipole" in cols:
        d = np.asarray(cols["dipole"])
        mean, err, plateau = reblock_columns(d)
        norm = dipole_norm(d, mean)
        out["dipole"] = {"au": _lists(mean, err, plateau),
                         "debye": _lists(mean * AU_TO_DEBYE, err * AU_TO_DEBYE, plateau),
                         "norm_au": norm, "norm_debye": None if norm is None else
                         {k: (v * AU_TO_DEBYE if k in ("mean", "stderr") else v)
                          for k, v in norm.items()},
                         "origin": "centre of nuclear charge",
                         **_nonfinite(cols, "dipole_nonfinite", walkers)}
    if "force_hf" in cols:
        hf, zv, zb = (np.asarray(cols[k]) for k in ("force_hf", "force_zv", "force_pulay"))
        out["forces"] = {"unit": "hartree/bohr",
                         **{name: _lists(*reblock_columns(series)) for name, series in
                            (("hf", hf), ("hf_zb", hf + zb), ("zv", zv), ("zv_zb", zv + zb))},
                         **_nonfinite(cols, "forces_nonfinite", walkers)}
    if "density_radial" in cols:
        r_max = float(attrs.get("density_rmax", np.nan))
        n_bins = np.asarray(cols["density_radial"]).shape[1]
        edges = np.linspace(0.0, r_max, n_bins + 1)
        zedges = np.linspace(-r_max, r_max, n_bins + 1)
        m, e, p = reblock_columns(cols["density_radial"])
        vol = shell_volumes(edges)
        mz, ez, pz = reblock_columns(cols["density_axial"])
        dz = np.diff(zedges)
        n_el = float(np.nanmean(np.sum(cols["density_radial"], axis=1)
                                + cols["density_radial_outside"]))
        out["density"] = {
            "radial_edges_bohr": edges.tolist(), "radial": _lists(m / vol, e / vol, p),
            "radial_outside_share": float(np.nanmean(cols["density_radial_outside"])) / n_el,
            "axial_edges_bohr": zedges.tolist(), "axial": _lists(mz / dz, ez / dz, pz),
            "axial_outside_share": float(np.nanmean(cols["density_axial_outside"])) / n_el,
            "centre_bohr": [float(c) for c in np.ravel(attrs.get("density_centre", []))] or None}
    return out


def observable_columns(cols: dict) -> dict:
    """The observable columns among `cols` (those of COLUMNS)."""
    keep = {c for names in COLUMNS.values() for c in names}
    return {k: v for k, v in cols.items() if k in keep}


def _pm(mean, err, plateau, fmt: str = ".4f", sep: str = " ± ") -> str:
    """'mean ± err', or 'mean ± >=err' where reblocking found no plateau (the error is then
    a lower bound, as the energy's is printed)."""
    low = plateau is not None and not plateau
    return f"{mean:{fmt}}{sep}{'>=' if low else ''}{err:{fmt.lstrip('+')}}"


def format_lines(obs: dict, steps: int = 0, run_dir=None) -> list[str]:
    """Human-readable lines (value ± error) of `summarize_observables` output; an error
    without a reblocking plateau is printed as a lower bound, `± >=`, as the energy's, and a
    note counts them and gives the `vmc eval` command (4× `steps`, at least 2000) for
    `run_dir`."""
    lines = []
    if "s2" in obs:
        s = obs["s2"]
        lines.append(f"<S^2> = {_pm(s['mean'], s['stderr'], s.get('plateau'))}")
    if "dipole" in obs:
        d = obs["dipole"]
        plateaus = d["au"].get("plateau") or [None] * len(d["au"]["mean"])
        comp = ", ".join(_pm(m, e, p) for m, e, p in
                         zip(d["au"]["mean"], d["au"]["stderr"], plateaus))
        n = d["norm_au"] or {"mean": float("nan"), "stderr": float("nan")}
        p = n.get("plateau")
        lines.append(f"dipole (e·bohr, about the centre of nuclear charge) = [{comp}]; |d| = "
                     f"{_pm(n['mean'], n['stderr'], p)} e·bohr = "
                     f"{_pm(n['mean'] * AU_TO_DEBYE, n['stderr'] * AU_TO_DEBYE, p)} D")
    if "forces" in obs:
        f = obs["forces"]
        for i in range(len(f["zv_zb"]["mean"])):
            cells = []
            for name in ("hf", "zv", "zv_zb"):
                m, e = f[name]["mean"][i], f[name]["stderr"][i]
                p = f[name]["plateau"][i] if "plateau" in f[name] else [None] * len(m)
                cells.append(f"{name} [" + ", ".join(_pm(a, b, c, "+.4f", "±")
                                                     for a, b, c in zip(m, e, p)) + "]")
            lines.append(f"force on nucleus {i} (Ha/bohr): " + "; ".join(cells))
    if "density" in obs:
        d = obs["density"]
        lines.append(f"density: {len(d['radial']['mean'])} radial bins to "
                     f"{d['radial_edges_bohr'][-1]:g} bohr; share of electrons outside the "
                     f"radial grid {d['radial_outside_share']:.3g}, axial "
                     f"{d['axial_outside_share']:.3g}")
    lower = _lower_bounds(obs)
    bins = _density_lower_bounds(obs)
    if lower or bins:
        what = [f"{lower} of these error bars" if lower else "",
                f"{bins[0]} of {bins[1]} density bins" if bins else ""]
        where = "marked ± >= above" if lower else ""
        where += (", " if lower and bins else "") + (
            "the density bins' in summary.json `plateau`" if bins else "")
        lines.append(f"note: {' and '.join(w for w in what if w)} are lower bounds (reblocking "
                     f"found no plateau; {where}): evaluate longer (`vmc eval "
                     f"{run_dir or 'RUN'} --steps {max(4 * int(steps or 0), 2000)}`)")
    return lines


def _density_lower_bounds(obs: dict):
    """(bins without a reblocking plateau, bins) of the radial and axial density, or None."""
    if "density" not in obs:
        return None
    flags = [f for part in ("radial", "axial")
             for f in (obs["density"][part].get("plateau") or [])]
    low = sum(1 for f in flags if not f)
    return (low, len(flags)) if low else None


def _lower_bounds(obs: dict) -> int:
    """How many of the printed errors (S², dipole components and norm, forces) have no
    reblocking plateau."""
    flags = []
    if "s2" in obs:
        flags.append(obs["s2"].get("plateau"))
    if "dipole" in obs:
        flags += list(obs["dipole"]["au"].get("plateau") or [])
        flags.append((obs["dipole"]["norm_au"] or {}).get("plateau"))
    if "forces" in obs:
        for name in ("hf", "zv", "zv_zb"):
            flags += list(np.ravel(obs["forces"][name].get("plateau", [])))
    return sum(1 for f in flags if f is not None and not f)
