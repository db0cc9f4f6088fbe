"""Pseudopotential (ccECP) checks of issue 17: HF reproduction, references, cost, training.

    python scripts/ecp_check.py hf   [--molecules O H2O] [--target-mha 1.0] [--walkers 4096]
    python scripts/ecp_check.py refs [--atoms Na Mg O S] [--bases tz qz]
    python scripts/ecp_check.py cost [--atom S] [--walkers 256] [--steps 20] [--preset tiny]
                                     [--pretrain-steps 200] [--train-steps 100]
    python scripts/ecp_check.py train [--atoms Na Mg O S] [--set optim.steps=...]
    python scripts/ecp_check.py walkers RUN_DIR [--step N]

hf:    `ansatz.name: hf` with `hamiltonian.ecp: ccecp` must reproduce PySCF's ROHF/RHF energy
       in ccecp-cc-pvdz with the same ECP within 3σ, σ ≤ target (sampled in chunks).
refs:  valence-space reference energies with the ccECP from PySCF: Na (one valence electron:
       ROHF, the exact energy at the basis-set limit), Mg (FCI), O, S (CCSD(T)); correlation
       extrapolated as E_X = E_CBS + A X⁻³ from the two largest bases (Helgaker et al.,
       J. Chem. Phys. 106, 9639 (1997)), HF taken from the largest basis.
cost:  one process, the same network: step time and E_L variance of training with and without
       the ECP, each measured after HF pretraining and a short training (not on random nets),
       and the E_L evaluation time and compiled memory with and without the non-local
       part (ECP runs only).
train: `vmc run` with ccECP for each atom, then a table of E ± σ against the `refs` numbers.
walkers: where a trained ECP run's high local energies sit: the checkpoint's walkers binned
       by their smallest electron–ECP-nucleus distance, with mean E_L and mean non-local
       part per bin, the highest E_L walkers split into non-local, ECP local and the rest
       (kinetic + Coulomb), and the non-local channels V_l(r).

Na and Mg (within 0.3 mHa with defaults) train on a 2-core CPU in 4 and 9 minutes
(`vmc run systems/Na_ccecp.yaml`, README "Pseudopotentials"); O and S (within 5 mHa) need a
GPU or hours.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from vmc.cpu_env import configure_process  # noqa: E402

configure_process()   # as vmc.cli: the deadlock flag, one OpenBLAS thread

import jax  # noqa: E402
import numpy as np  # noqa: E402

ATOMS = {"Na": 1, "Mg": 0, "O": 2, "S": 2, "Cl": 1, "Si": 2}       # symbol -> 2S (ground)
MOLECULES = {
    "O": ([{"symbol": "O", "position": [0.0, 0.0, 0.0]}], 2),
    # H2O at the experimental geometry (r = 0.9572 Å, 104.52°), bohr
    "H2O": ([{"symbol": "O", "position": [0.0, 0.0, 0.0]},
             {"symbol": "H", "position": [1.430429, 1.107157, 0.0]},
             {"symbol": "H", "position": [-1.430429, 1.107157, 0.0]}], 0),
}


def _config(atoms, spin, overrides=(), preset=None, name="molecule"):
    from vmc.config import config_from_dict
    return config_from_dict({"atoms": atoms, "spin": spin}, name=name, preset=preset,
                            overrides=("hamiltonian.ecp=ccecp",) + tuple(overrides))


def cmd_hf(a) -> int:
    from vmc import analysis
    from vmc.evaluate import evaluate
    from vmc.sampler import init_walkers
    from vmc.train import build
    rows = []
    for name in a.molecules:
        atoms, spin = MOLECULES[name]
        cfg = _config(atoms, spin, ("ansatz.name=hf", f"sampler.walkers={a.walkers}",
                                    f"sampler.moves={a.moves}",
                                    f"hamiltonian.ecp_rule={a.rule}"), name=name)
        setup = build(cfg)
        key = jax.random.PRNGKey(a.seed)
        w = init_walkers(jax.random.fold_in(key, 0), setup.molecule, a.walkers, 0.8,
                         setup.dtype)
        width, chunks, start = 0.4, [], time.time()
        for c in range(10 ** 6):
            res = evaluate(setup, {}, w, width, steps=a.chunk, burn_in=100 if c == 0 else 0,
                           key=jax.random.fold_in(key, c + 1))
            w, width = res.walkers, res.width
            chunks.append(res.energy)
            rb = analysis.reblock(np.concatenate(chunks))
            print(f"  {name}: E = {rb.mean:.6f} ± {1e3 * rb.stderr:.3f} mHa "
                  f"({time.time() - start:.0f} s)", flush=True)
            if rb.stderr <= a.target_mha / 1e3 or time.time() - start > 60 * a.max_minutes:
                break
        dev = rb.mean - setup.hf.energy
        rows.append((name, rb.mean, rb.stderr, setup.hf.energy, dev / rb.stderr,
                     abs(dev) <= 3 * rb.stderr and rb.stderr <= a.target_mha / 1e3))
    print(f"\n{'system':6} {'E_VMC (Ha)':>13} {'σ (mHa)':>8} {'E_HF (Ha)':>13} {'dev/σ':>6}  pass")
    for n, e, s, hf, d, ok in rows:
        print(f"{n:6} {e:13.6f} {1e3 * s:8.3f} {hf:13.6f} {d:6.2f}  {'yes' if ok else 'NO'}")
    return 0 if all(r[-1] for r in rows) else 1


def reference(symbol: str, bases=("tz", "qz"), verbose=True) -> dict:
    """Valence-space reference energy (hartree) of an atom with ccECP, see the module doc."""
    from pyscf import cc, fci, gto, scf
    spin = ATOMS[symbol]
    out = {}
    for b in bases:
        mol = gto.M(atom=f"{symbol} 0 0 0", basis=f"ccecp-cc-pv{b}", ecp="ccecp", spin=spin,
                    verbose=0)
        mf = (scf.ROHF(mol) if spin else scf.RHF(mol)).run()
        if mol.nelectron == 1:
            corr = 0.0
        elif mol.nelectron == 2:
            corr = fci.FCI(mf).kernel()[0] - mf.e_tot
        else:
            c = cc.CCSD(mf).run()
            corr = c.e_corr + c.ccsd_t()
        out[b] = (mf.e_tot, corr)
        if verbose:
            print(f"  {symbol} ccecp-cc-pv{b}: HF {mf.e_tot:.6f}  corr {corr:.6f}", flush=True)
    card = {"dz": 2, "tz": 3, "qz": 4, "5z": 5}
    (x1, (_, c1)), (x2, (hf2, c2)) = [(card[b], out[b]) for b in bases[-2:]]
    cbs = (x2 ** 3 * c2 - x1 ** 3 * c1) / (x2 ** 3 - x1 ** 3)
    n_el = mol.nelectron
    method = ("ROHF (one electron: exact in the basis)" if n_el == 1 else
              "RHF + FCI" if n_el == 2 else f"{'ROHF' if spin else 'RHF'} + CCSD(T)")
    return {"symbol": symbol, "energy": hf2 + cbs, "hf": hf2,
            "source": f"PySCF, ccECP valence space, {method}, ccecp-cc-pv{bases[-2]}/"
                      f"{bases[-1]}, correlation extrapolated as X^-3, HF from the largest"}


def cmd_refs(a) -> int:
    for s in a.atoms:
        r = reference(s, tuple(a.bases))
        print(f"{s}: {r['energy']:.6f} Ha (HF {r['hf']:.6f}; {r['source']})")
    return 0


def _step_stats(cfg, steps: int, train_steps: int = 0, seed: int = 0):
    """Pretrain (`cfg.pretrain.steps`), burn in, train `train_steps` steps, then time `steps`
    more training steps: (setup, state, median step time s, median E_L variance Ha²), the
    variance over the second half of the timed steps (trained networks, not random ones)."""
    import tempfile
    from vmc.pretrain import pretrain
    from vmc.stages import burn_in
    from vmc.train import build, init_state, make_train_step
    setup = build(cfg)
    state = init_state(setup, jax.random.PRNGKey(seed))
    log = lambda m: print(f"  {m}", flush=True)   # noqa: E731
    t0 = time.perf_counter()
    if cfg.pretrain.steps:
        with tempfile.TemporaryDirectory() as tmp:
            state = pretrain(setup, state, jax.random.PRNGKey(seed + 1), tmp, log)
    state = burn_in(setup, state, jax.random.PRNGKey(seed + 2), log)
    step = make_train_step(setup)
    times, var = [], []
    for t in range(train_steps + steps):
        t1 = time.perf_counter()
        state, st = step(state, jax.random.PRNGKey(1000 + t), t)
        jax.block_until_ready(st.energy)
        if t >= train_steps:
            times.append(time.perf_counter() - t1)
            var.append(float(st.variance))
        if (t + 1) % 50 == 0 or t + 1 == train_steps + steps:
            log(f"step {t + 1}: E {float(st.energy):.4f} Ha, var {float(st.variance):.4g} Ha²")
    log(f"{setup.molecule.n_electrons} electrons: pretrain + train in "
        f"{time.perf_counter() - t0:.0f} s")
    return setup, state, float(np.median(times[1:])), float(np.median(var[steps // 2:]))


def cmd_cost(a) -> int:
    sym = a.atom
    spin = ATOMS[sym]
    atoms = [{"symbol": sym, "position": [0.0, 0.0, 0.0]}]
    over = (f"sampler.walkers={a.walkers}", f"pretrain.steps={a.pretrain_steps}") + tuple(a.set)
    from vmc.config import config_from_dict
    rows = []
    for label, ecp in (("all-electron", "null"), ("ccecp", "ccecp")):
        cfg = config_from_dict({"atoms": atoms, "spin": spin}, name=sym, preset=a.preset,
                               overrides=over + (f"hamiltonian.ecp={ecp}",))
        setup, state, dt, var = _step_stats(cfg, a.steps, a.train_steps)
        rows.append((label, setup.molecule.n_electrons, dt, var))
        if ecp == "ccecp":
            from vmc.hamiltonian import make_local_energy, over_walkers
            m = setup.molecule
            e_nl = over_walkers(setup.local_energy)
            import dataclasses
            local_only = dataclasses.replace(m, ecp=(None,) * m.n_atoms)   # same Z_eff, no ECP
            e_no = over_walkers(make_local_energy(setup.ansatz.log_psi, local_only,
                                                  dtype=setup.dtype))
            w, key = state.mcmc.walkers, jax.random.PRNGKey(5)
            for nm, f, args in (("E_L with ECP", e_nl, (state.params, w, key)),
                                ("E_L without ECP terms", e_no, (state.params, w))):
                c = jax.jit(f).lower(*args).compile()
                mem = c.memory_analysis()
                jax.block_until_ready(c(*args))
                t0 = time.perf_counter()
                for _ in range(3):
                    jax.block_until_ready(c(*args))
                tmp = getattr(mem, "temp_size_in_bytes", 0) / 2 ** 20 if mem else float("nan")
                print(f"  {nm}: {(time.perf_counter() - t0) / 3 * 1e3:.1f} ms per "
                      f"{w.shape[0]} walkers, compiled temp memory {tmp:.1f} MiB")
    print(f"\n{sym}: {'run':13} {'electrons':>9} {'step (s)':>9} {'var E_L (Ha²)':>14}")
    for label, n, dt, var in rows:
        print(f"{sym}: {label:13} {n:9d} {dt:9.3f} {var:14.4f}")
    (_, _, dt_ae, v_ae), (_, _, dt_ecp, v_ecp) = rows
    faster, lower = dt_ecp < dt_ae, v_ecp * 10 <= v_ae
    print(f"{sym}: step {dt_ae / dt_ecp:.1f}x faster with ccECP ({'pass' if faster else 'FAIL'}), "
          f"variance {v_ae / v_ecp:.1f}x lower (needs >= 10x: {'pass' if lower else 'FAIL'})")
    return 0 if faster and lower else 1


def cmd_train(a) -> int:
    """`vmc run systems/<X>_ccecp.yaml` per atom (defaults unless --set), then the table."""
    rows = []
    for s in a.atoms:
        cmd = ["vmc", "run", f"systems/{s}_ccecp.yaml"] + [f"--set={o}" for o in a.set]
        if a.preset:
            cmd += ["--preset", a.preset]
        print(" ".join(cmd), flush=True)
        rows.append((s, subprocess.call(cmd)))
    print(f"\n{'atom':5} {'rc':>3}  (each run's summary.json has energy_ha, energy_stderr_ha, "
          f"reference_ha, deviation_mha)")
    for s, rc in rows:
        print(f"{s:5} {rc:3d}")
    return 0 if all(r[1] == 0 for r in rows) else 1


def cmd_walkers(a) -> int:
    """Per-walker E_L of a run's checkpoint split by distance to the ECP nuclei (one key)."""
    import pathlib
    import jax.numpy as jnp
    from vmc import checkpoint as ckpt, ecp
    from vmc.config import load_config
    from vmc.hamiltonian import ecp_table, make_local_energy
    from vmc.train import build, init_state
    run = pathlib.Path(a.run)
    cfg = load_config(run / "config.yaml")
    setup = build(cfg)
    state = init_state(setup, jax.random.PRNGKey(0))
    folder = run / "checkpoints"
    path = ckpt.checkpoint_path(folder, a.step) if a.step else ckpt.list_checkpoints(folder)[-1]
    trees, attrs = ckpt.restore(path, {"params": state.params, "mcmc": state.mcmc})
    params, walkers = trees["params"], trees["mcmc"].walkers
    mol = setup.molecule
    atoms = jnp.asarray(mol.positions, walkers.dtype)
    table = ecp_table(mol)
    if table is None:
        print(f"{run}: not an ECP run")
        return 2
    lp, rule = setup.ansatz.log_psi, cfg.hamiltonian.ecp_rule
    keys = jax.random.split(jax.random.PRNGKey(a.seed), walkers.shape[0])
    e_l = make_local_energy(lp, mol, cfg.hamiltonian.laplacian, walkers.dtype, rule)
    e = np.asarray(jax.jit(jax.vmap(e_l, in_axes=(None, 0, 0)))(params, walkers, keys))
    nl = np.asarray(jax.jit(jax.vmap(lambda x, k: ecp.nonlocal_energy(
        table, lambda y: lp(params, y), x, atoms, k, rule)))(walkers, keys))
    loc = np.asarray(jax.jit(jax.vmap(lambda x: ecp.local_potential(table, x, atoms)))(walkers))
    centres = np.asarray(mol.positions)[np.asarray(table.atoms)]
    r = np.linalg.norm(np.asarray(walkers)[:, :, None] - centres[None, None], axis=-1)
    r = r.min(axis=(1, 2))
    print(f"{run} step {attrs['step']}: {len(e)} walkers, E_L mean {e.mean():.4f} median "
          f"{np.median(e):.4f} Ha, non-local cutoff {np.round(table.cutoff, 3).tolist()} bohr")
    print("smallest electron-ECP nucleus distance (bohr)  walkers  mean E_L (Ha)  mean non-local (Ha)")
    for lo, hi in [(0, 0.3), (0.3, 0.6), (0.6, 1.0), (1.0, np.inf)]:
        m = (r >= lo) & (r < hi)
        if m.any():
            print(f"  [{lo}, {hi})  {int(m.sum()):5d}  {e[m].mean():10.4f}  {nl[m].mean():10.4f}")
    print("highest E_L: E_L, non-local, ECP local, rest (kinetic + Coulomb), distance")
    for i in np.argsort(e)[-a.top:][::-1]:
        print(f"  {e[i]:9.3f} {nl[i]:9.3f} {loc[i]:9.3f} {e[i] - nl[i] - loc[i]:9.3f} {r[i]:.3f}")
    rr = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2])
    v = np.asarray(ecp.radial(jnp.asarray(table.nonlocal_)[None], jnp.asarray(rr)[:, None, None]))
    for k, x in enumerate(rr):
        print(f"  V_l(r = {x}) = {np.round(v[k, 0], 2).tolist()} Ha (l = 0, 1, ...)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hf")
    h.add_argument("--molecules", nargs="+", default=list(MOLECULES), choices=list(MOLECULES))
    h.add_argument("--target-mha", type=float, default=1.0)
    h.add_argument("--walkers", type=int, default=4096)
    h.add_argument("--moves", type=int, default=10)
    h.add_argument("--chunk", type=int, default=100)
    h.add_argument("--rule", default="tetrahedron", help="exact for s/p/d HF orbitals")
    h.add_argument("--max-minutes", type=float, default=60.0)
    h.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("refs")
    r.add_argument("--atoms", nargs="+", default=["Na", "Mg", "O", "S"], choices=list(ATOMS))
    r.add_argument("--bases", nargs="+", default=["tz", "qz"])
    c = sub.add_parser("cost")
    c.add_argument("--atom", default="S", choices=list(ATOMS))
    c.add_argument("--walkers", type=int, default=256)
    c.add_argument("--steps", type=int, default=20, help="timed training steps")
    c.add_argument("--pretrain-steps", type=int, default=200)
    c.add_argument("--train-steps", type=int, default=100,
                   help="training steps before the timed ones (the variance is of a trained net)")
    c.add_argument("--preset", default=None)
    c.add_argument("--set", nargs="*", default=[])
    t = sub.add_parser("train")
    t.add_argument("--atoms", nargs="+", default=["Na", "Mg", "O", "S"], choices=list(ATOMS))
    t.add_argument("--preset", default=None)
    t.add_argument("--set", nargs="*", default=[])
    w = sub.add_parser("walkers")
    w.add_argument("run")
    w.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    w.add_argument("--top", type=int, default=8)
    w.add_argument("--seed", type=int, default=5)
    a = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    return {"hf": cmd_hf, "refs": cmd_refs, "cost": cmd_cost, "train": cmd_train,
            "walkers": cmd_walkers}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
