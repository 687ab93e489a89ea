"""Benchmark the CV-biased diffusion sampler against metadynamics and MD on the 2D systems, at equal energy budgets.

For ``mueller_brown`` and ``double_well_2d`` (one particle, z restrained, CVs s = (x, y)), each method gets
the same number of energy/force evaluations (``--budget``; several values give several rows):

(a) the CV-biased diffusion sampler (``DiffusionSampler`` with a ``WellTemperedBias`` on x, y; bias frozen
    for production): training chains (``batch_size`` per iteration) plus production samples, a quarter of the
    budget (``--sample-fraction``); the exact discrete-chain importance weights for the Boltzmann density;
(a') from the same run, its final bias's well-tempered estimate F(s) = -gamma/(gamma-1) V(s) (approximate);
(b) the same sampler without a bias (``bias=None``), same settings and budget, exact weights;
(c) OpenMM ``app.Metadynamics``, well-tempered with the same bias factor and hill width on the same CVs
    (``CustomExternalForce("x")``/``("y")`` as ``BiasVariable``), LangevinMiddle; one evaluation per step,
    plus one (bias force group only) per hill height, counted. Two estimates from one run:
    "reweighted" = frames after the first ``--metad-discard`` of the run weighted by exp(+beta V_final(s)),
    V_final the final bias evaluated by OpenMM at each frame (no c(t): approximate, exact only for a static
    bias); "-g/(g-1)V" = the well-tempered estimate F(s) = -gamma/(gamma-1) V_final(s) (approximate);
(d) plain Langevin MD (LangevinMiddle), one evaluation per step, unweighted frames.

MD and metadynamics: Reference platform, friction ``--friction``, time step dt = 0.1 / omega_max rounded down
to whole fs, omega_max = sqrt(lambda_max / m) with lambda_max the largest Hessian eigenvalue of U(x, y) (or
the z spring) where U is within 40 kJ/mol of its minimum; a frame every ``--stride`` steps. Before the runs
(outside the budgets) an NVE (Verlet) run of 10,000 steps at that dt checks the total-energy drift.

Reported per method: FES error (``analysis.fes.fes_error``: population-weighted mean absolute error over bins
within 20 kJ/mol of the exact minimum; exact bin probabilities by 16x16 Gauss-Legendre quadrature of the
reference's normalised density ``PlanarReference.log_density_xy`` in each bin), Delta F(A -> B) between the
basin boxes with its error (diffusion: bootstrap over independent samples; MD/metadynamics: delete-one-block
jackknife over ``--blocks`` contiguous blocks; -g/(g-1)V: none) against the exact value
(``PlanarReference.probability``), energy evaluations, CPU seconds (``time.process_time``, this process:
generating the samples and their weights, i.e. training + sampling, or the run + V_final at the frames / on
the grid; not the FES and Delta F analysis) and, for the diffusion samplers, the Kish ESS of the exact weights.
Prints the settings and one markdown table per system.

    python benchmarks/bench_diffusion.py [--budget 30000 100000] [--quick]
"""

import argparse
import math
import time

import numpy as np
import openmm
from openmm import app, unit

from openmm_flowplugin import systems
from openmm_flowplugin.analysis.fes import basin_free_energy_difference, fes_error, free_energy_surface
from openmm_flowplugin.diffusion import DiffusionSampler, NoiseSchedule, WellTemperedBias
from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.geometry import CartesianComponent

INF = math.inf
# name: CV grid (x, y) lower and upper corners (nm), basins A and B as ((x_lo, x_hi), (y_lo, y_hi)).
CASES = {
    "mueller_brown": dict(lower=(-2.0, -1.0), upper=(1.5, 2.5), A=((-1.5, -0.2), (1.0, 2.0)), B=((0.2, 1.2), (-0.4, 0.4))),
    "double_well_2d": dict(lower=(-2.0, -1.5), upper=(2.0, 1.5), A=((-INF, 0.0), (-INF, INF)), B=((0.6, 1.4), (-0.3, 0.3))),
}
HILL_WIDTH, HILL_HEIGHT, BIAS_FACTOR, N_NODES = 0.25, 0.02, 6.0, (36, 41)  # diffusion bias (as in the tests)
SAMPLER = dict(hidden=64, n_layers=2, batch_size=128, n_adjoint_steps=40, training_batch_size=128, max_gradient_norm=20.0)
SCHEDULE = (1.5, 0.02, 50)  # sigma_max, sigma_min (nm), Euler-Maruyama steps
SUB = 5  # sub-points per bin and axis for the -g/(g-1)V estimate


# ---------------------------------------------------------------------------------------------- exact references
def exact_fes(reference, edges, order=16):
    """Exact bin probabilities and F = -kT ln(p / area) (min 0) by Gauss-Legendre quadrature in each bin."""
    nodes, weights = np.polynomial.legendre.leggauss(order)

    def points(e):
        half, mid = 0.5 * np.diff(e)[:, None], 0.5 * (e[1:] + e[:-1])[:, None]
        return (mid + half * nodes).ravel(), (half * weights).ravel()

    (x, wx), (y, wy) = points(edges[0]), points(edges[1])
    X, Y = np.meshgrid(x, y, indexing="ij")
    integrand = np.exp(reference.log_density_xy(X, Y)) * wx[:, None] * wy[None, :]
    p = integrand.reshape(len(edges[0]) - 1, order, len(edges[1]) - 1, order).sum(axis=(1, 3))
    area = np.outer(np.diff(edges[0]), np.diff(edges[1]))
    with np.errstate(divide="ignore"):  # bins whose density underflows: F = inf, outside every cutoff
        f = -reference.kT * np.log(p / area)
    return p, f - f.min()


def in_box(s, box):
    (x0, x1), (y0, y1) = box
    return (s[..., 0] >= x0) & (s[..., 0] < x1) & (s[..., 1] >= y0) & (s[..., 1] < y1)


def exact_delta_f(reference, case):
    def probability(box):
        return reference.probability(lambda x, y: in_box(np.stack([x, y], -1), box))

    return -reference.kT * math.log(probability(case["B"]) / probability(case["A"]))


# ---------------------------------------------------------------------------------------------- MD settings
def md_timestep(molecular_system, case, fraction=0.1, window=40.0):
    """dt (fs) = fraction / omega_max, rounded down; omega_max from the stiffest Hessian eigenvalue in the low-U region."""
    f, (x0, y0), (x1, y1) = molecular_system.reference.potential_xy, case["lower"], case["upper"]
    X, Y = np.meshgrid(np.linspace(x0, x1, 351), np.linspace(y0, y1, 351), indexing="ij")
    h = 1e-4
    fxx = (f(X + h, Y) - 2 * f(X, Y) + f(X - h, Y)) / h**2
    fyy = (f(X, Y + h) - 2 * f(X, Y) + f(X, Y - h)) / h**2
    fxy = (f(X + h, Y + h) - f(X + h, Y - h) - f(X - h, Y + h) + f(X - h, Y - h)) / (4 * h * h)
    largest = 0.5 * (fxx + fyy) + np.sqrt(0.25 * (fxx - fyy) ** 2 + fxy**2)
    u = f(X, Y)
    stiffness = max(largest[u - u.min() < window].max(), molecular_system.options["z_spring_constant"])
    mass = molecular_system.system.getParticleMass(0).value_in_unit(unit.dalton)
    omega = math.sqrt(stiffness / mass)  # 1/ps
    return float(math.floor(1000 * fraction / omega)), omega


def energy_drift(molecular_system, dt_fs, seed, n_steps=10000, interval=10):
    """NVE check at dt: (drift of E_total in kT/ns from a linear fit, std(E_total)/std(E_kinetic))."""
    integrator = openmm.VerletIntegrator(dt_fs * unit.femtosecond)
    context = openmm.Context(molecular_system.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(molecular_system.positions)
    context.setVelocitiesToTemperature(molecular_system.temperature, seed)
    total, kinetic = [], []
    for _ in range(n_steps // interval):
        integrator.step(interval)
        state = context.getState(getEnergy=True)
        k = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        kinetic.append(k)
        total.append(k + state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    kT = molecular_system.reference.kT
    t_ns = np.arange(len(total)) * interval * dt_fs * 1e-6
    slope = np.polyfit(t_ns, np.asarray(total) / kT, 1)[0]
    return slope, float(np.std(total) / np.std(kinetic))


# ---------------------------------------------------------------------------------------------- methods
def run_diffusion(molecular_system, case, budget, sample_fraction, biased, seed):
    batch = SAMPLER["batch_size"]
    n_iterations = max(1, int(round(budget * (1.0 - sample_fraction))) // batch)
    n_samples = budget - n_iterations * batch
    bias = None
    if biased:
        bias = WellTemperedBias([CartesianComponent(0, "x"), CartesianComponent(0, "y")], lower=case["lower"], upper=case["upper"],
                                n_nodes=N_NODES, hill_width=HILL_WIDTH, hill_height=HILL_HEIGHT, bias_factor=BIAS_FACTOR,
                                temperature=molecular_system.temperature)
    start = time.process_time()
    sampler = DiffusionSampler(molecular_system, bias=bias, schedule=NoiseSchedule(*SCHEDULE), seed=seed, **SAMPLER)
    sampler.train(n_iterations)
    samples = sampler.sample(n_samples)
    return dict(s=samples.positions[:, 0, :2], log_w=samples.log_weights, evaluations=sampler.n_energy_evaluations,
                cpu=time.process_time() - start, ess=samples.n_effective, n=n_samples, invalid=sampler.n_invalid, bias=bias,
                detail=f"{n_iterations} it. + {n_samples} samples")


def run_md(molecular_system, case, budget, dt_fs, friction, stride, seed, metad_frequency=None, metad_height=None):
    """Plain MD, or well-tempered metadynamics if ``metad_frequency`` is given; frames of (x, y) every ``stride`` steps."""
    start = time.process_time()
    system = openmm.XmlSerializer.clone(molecular_system.system)
    metad = None
    if metad_frequency:
        variables = []
        for axis, name in enumerate("xy"):
            force = openmm.CustomExternalForce(name)
            force.addParticle(0, [])
            variables.append(app.BiasVariable(force, case["lower"][axis], case["upper"][axis], HILL_WIDTH))
        metad = app.Metadynamics(system, variables, molecular_system.temperature, BIAS_FACTOR, metad_height * unit.kilojoule_per_mole,
                                 metad_frequency)
        n_steps = metad_frequency * (budget // (metad_frequency + 1))  # + one bias-group energy per hill
        evaluations = n_steps + n_steps // metad_frequency
    else:
        n_steps = evaluations = budget
    integrator = openmm.LangevinMiddleIntegrator(molecular_system.temperature, friction / unit.picosecond, dt_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(molecular_system.topology, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(molecular_system.positions)
    simulation.context.setVelocitiesToTemperature(molecular_system.temperature, seed)
    frames = []
    for _ in range(n_steps // stride):
        if metad is None:
            simulation.step(stride)
        else:
            metad.step(simulation, stride)
        frames.append(simulation.context.getState(getPositions=True).getPositions(asNumpy=True)[0, :2].value_in_unit(unit.nanometer))
    result = dict(s=np.array(frames), evaluations=evaluations, n=len(frames), detail=f"{n_steps} steps, dt {dt_fs:.0f} fs")
    if metad is not None:
        result.update(metad=metad, simulation=simulation, n_hills=n_steps // metad_frequency)
    result["cpu"] = time.process_time() - start
    return result


def bias_energy(metad, simulation, xy):
    """V_final (kJ/mol) at CV values ``xy`` (n, 2), evaluated by OpenMM (the metadynamics force group only)."""
    context, group = simulation.context, {metad._force.getForceGroup()}
    values = np.empty(len(xy))
    for i, (x, y) in enumerate(xy):
        context.setPositions([openmm.Vec3(x, y, 0.0)])
        values[i] = context.getState(getEnergy=True, groups=group).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return values


# ---------------------------------------------------------------------------------------------- estimates
def block_delta_f(s, log_w, case, kT, n_blocks):
    """Delta F(A -> B) from a correlated weighted trajectory, with a delete-one-block jackknife error."""
    w = np.exp(log_w - log_w.max())
    blocks = np.array_split(np.arange(len(s)), n_blocks)
    sums = np.array([[w[b][in_box(s[b], case[name])].sum() for name in "AB"] for b in blocks])
    total = sums.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = -kT * math.log(total[1] / total[0]) if total.all() else math.nan
        leave_out = -kT * np.log((total[1] - sums[:, 1]) / (total[0] - sums[:, 0]))
    error = math.sqrt((n_blocks - 1) / n_blocks * np.sum((leave_out - leave_out.mean()) ** 2)) if np.isfinite(leave_out).all() else INF
    return value, error


def tail_summary(delta):
    """The weights' tail per basin for a table cell: reliable or not, Pareto k̂ and effective samples (first / second basin)."""
    k = " / ".join(f"{v:.2f}" for v in delta.pareto_k.values())
    ess = " / ".join(f"{v:.0f}" for v in delta.effective_samples.values())
    return f"{'reliable' if delta.reliable else 'UNRELIABLE'}: k̂ {k}, ESS {ess}"


def estimate(result, case, edges, exact, temperature, kT, n_blocks, n_bootstrap, seed):
    """Adds FES error and Delta F (with error) to a run's result (analysis time not counted)."""
    s, log_w = result["s"], result.get("log_w", np.zeros(len(result["s"])))
    fes = free_energy_surface(s, log_w, edges, temperature, n_bootstrap=0)
    result["fes_error"] = fes_error(fes.free_energy, exact["f"], exact["p"])
    if "ess" in result:  # independent samples: bootstrap
        try:
            delta = basin_free_energy_difference(s, log_w, {"A": case["A"], "B": case["B"]}, "A", "B", temperature,
                                                 n_bootstrap=n_bootstrap, seed=seed)
            result["delta_f"], result["delta_f_error"] = delta.value, delta.error
            result["tail"] = tail_summary(delta)
        except InvalidInputError:  # a basin without weight: reported as never visited
            result["delta_f"], result["delta_f_error"] = math.nan, math.nan
    else:
        result["delta_f"], result["delta_f_error"] = block_delta_f(s, log_w, case, kT, n_blocks)
    return result


def well_tempered_estimate(bias_of_xy, case, edges, exact, kT):
    """FES error and Delta F of F(s) = -g/(g-1) V(s): V at the midpoints of a 5x5 subgrid of each bin, Boltzmann-averaged."""
    fine = [np.concatenate([np.linspace(a, b, SUB + 1)[:-1] + 0.5 * (b - a) / SUB for a, b in zip(e[:-1], e[1:])]) for e in edges]
    X, Y = np.meshgrid(*fine, indexing="ij")
    xy = np.stack([X.ravel(), Y.ravel()], -1)
    f = -BIAS_FACTOR / (BIAS_FACTOR - 1.0) * bias_of_xy(xy)
    boltzmann = np.exp(-(f - f.min()) / kT)
    p = boltzmann.reshape(len(edges[0]) - 1, SUB, len(edges[1]) - 1, SUB).sum(axis=(1, 3))
    area = np.outer(np.diff(edges[0]), np.diff(edges[1]))
    f_bins = -kT * np.log(p / area)
    pa, pb = (boltzmann[in_box(xy, case[name])].sum() for name in "AB")
    return fes_error(f_bins - f_bins.min(), exact["f"], exact["p"]), -kT * math.log(pb / pa)


def metad_estimates(run, case, edges, exact, temperature, kT, n_blocks, discard):
    """The reweighted (final bias, after ``discard``) and the well-tempered -g/(g-1)V estimates of one metadynamics run.

    CPU time: the run plus evaluating V_final (at the frames, or on the grid); not the FES and Delta F analysis.
    """
    start = time.process_time()
    metad, simulation = run["metad"], run["simulation"]
    kept = run["s"][int(discard * len(run["s"])):]
    reweighted = dict(s=kept, log_w=bias_energy(metad, simulation, kept) / kT, evaluations=run["evaluations"], n=len(kept),
                      detail=f"{run['detail']}, {run['n_hills']} hills, last {1 - discard:.0%} reweighted")
    reweighted["cpu"] = run["cpu"] + time.process_time() - start
    start = time.process_time()
    fes_err, delta_f = well_tempered_estimate(lambda xy: bias_energy(metad, simulation, xy), case, edges, exact, kT)
    wt = dict(fes_error=fes_err, delta_f=delta_f, delta_f_error=math.nan, evaluations=run["evaluations"],
              cpu=run["cpu"] + time.process_time() - start, detail=f"{run['detail']}, {run['n_hills']} hills, final bias")
    return estimate(reweighted, case, edges, exact, temperature, kT, n_blocks, 0, 0), wt


# ---------------------------------------------------------------------------------------------- main
def fmt(value, digits=2):
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def main(budget=(30000, 100000), systems_=tuple(CASES), sample_fraction=0.25, bin_width=0.125, friction=1.0, stride=10,
         metad_frequency=100, metad_height=1.0, metad_discard=0.2, blocks=10, n_bootstrap=200, seed=2025):
    print(f"Settings: seed {seed}; diffusion: schedule NoiseSchedule{SCHEDULE}, {SAMPLER}, {sample_fraction:.0%} of the budget "
          f"as production samples; bias (a): grid {N_NODES} nodes, hill width {HILL_WIDTH} nm, height {HILL_HEIGHT} kJ/mol per "
          f"chain end point, gamma {BIAS_FACTOR}; metadynamics: OpenMM app.Metadynamics, hill width {HILL_WIDTH} nm, height "
          f"{metad_height} kJ/mol every {metad_frequency} steps, gamma {BIAS_FACTOR}, first {metad_discard:.0%} discarded before "
          f"reweighting; MD/metadynamics: LangevinMiddle, friction {friction}/ps, frame every {stride} steps, Reference platform; "
          f"Delta F errors: diffusion bootstrap ({n_bootstrap}), MD/metadynamics delete-one-block jackknife ({blocks} blocks); "
          f"FES bins {bin_width} nm, error over bins within 20 kJ/mol of the exact minimum.\n")
    for name in systems_:
        molecular_system, case = systems.get(name), CASES[name]
        reference, temperature = molecular_system.reference, molecular_system.temperature
        kT = reference.kT
        edges = [np.linspace(lo, hi, int(round((hi - lo) / bin_width)) + 1) for lo, hi in zip(case["lower"], case["upper"])]
        p, f = exact_fes(reference, edges)
        exact = dict(p=p, f=f)
        exact_df = exact_delta_f(reference, case)
        dt_fs, omega = md_timestep(molecular_system, case)
        drift, ratio = energy_drift(molecular_system, dt_fs, seed)
        rows = []
        for n_eval in budget:
            runs = {
                "(a) diffusion + WT bias (exact weights)": run_diffusion(molecular_system, case, n_eval, sample_fraction, True, seed),
                "(b) diffusion, no bias (exact weights)": run_diffusion(molecular_system, case, n_eval, sample_fraction, False, seed + 1),
            }
            for key in list(runs):
                runs[key] = estimate(runs[key], case, edges, exact, temperature, kT, blocks, n_bootstrap, seed)
            biased = runs["(a) diffusion + WT bias (exact weights)"]
            fes_err, delta_f = well_tempered_estimate(biased["bias"].value_at, case, edges, exact, kT)
            runs["(a') diffusion's bias, -g/(g-1)V"] = dict(fes_error=fes_err, delta_f=delta_f, delta_f_error=math.nan,
                                                          evaluations=biased["evaluations"], cpu=biased["cpu"],
                                                          detail=f"{biased['detail']}, final bias")
            runs = {key: runs[key] for key in sorted(runs, key=lambda k: k.replace("'", "~"))}
            metad = run_md(molecular_system, case, n_eval, dt_fs, friction, stride, seed + 2, metad_frequency, metad_height)
            runs["(c) metadynamics, reweighted by final bias"], runs["(c') metadynamics, -g/(g-1)V"] = metad_estimates(
                metad, case, edges, exact, temperature, kT, blocks, metad_discard)
            md = run_md(molecular_system, case, n_eval, dt_fs, friction, stride, seed + 3)
            runs["(d) plain MD"] = estimate(md, case, edges, exact, temperature, kT, blocks, n_bootstrap, seed)
            for method, r in runs.items():
                err = r["delta_f_error"]
                z = (r["delta_f"] - exact_df) / err if np.isfinite(err) and err > 0 else math.nan
                if not np.isfinite(r["delta_f"]):
                    delta = "a basin never visited"
                else:
                    delta = fmt(r["delta_f"]) + (" ± ∞" if err == INF else "" if not np.isfinite(err) else f" ± {err:.2f}")
                rows.append(f"| {n_eval} | {method} | {fmt(r['fes_error'])} | {delta} | {fmt(z, 1)} | {r.get('tail', '–')} | {r['evaluations']} | "
                            f"{r['cpu']:.1f} | {fmt(r.get('ess'), 0)} | {r['detail']} |")
        print(f"### {name} (T = {temperature.value_in_unit(unit.kelvin):.0f} K, kT = {kT:.3f} kJ/mol)\n")
        print(f"Exact Delta F(A -> B) = {exact_df:.2f} kJ/mol (A = {case['A']}, B = {case['B']}); {len(edges[0]) - 1}x{len(edges[1]) - 1} "
              f"bins, {int((f <= 20).sum())} within 20 kJ/mol. MD dt = {dt_fs:.0f} fs (omega_max = {omega:.2f}/ps, omega_max dt = "
              f"{omega * dt_fs / 1000:.2f}); NVE check at that dt: drift {drift:+.1e} kT/ns, std(E_total)/std(E_kin) = {ratio:.3f}.\n")
        print("| budget | method | FES error (kJ/mol) | ΔF(A→B) ± err (kJ/mol) | z vs exact | weights' tail (A / B) | energy evaluations | CPU s | ESS | run |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows) + "\n", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, nargs="+", default=[30000, 100000], help="energy evaluations per method (one row set each)")
    parser.add_argument("--systems", dest="systems_", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--sample-fraction", type=float, default=0.25, help="share of the diffusion budget for production samples")
    parser.add_argument("--bin-width", type=float, default=0.125, help="FES bin width, nm")
    parser.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps")
    parser.add_argument("--stride", type=int, default=10, help="MD steps between frames")
    parser.add_argument("--metad-frequency", type=int, default=100, help="steps between hills")
    parser.add_argument("--metad-height", type=float, default=1.0, help="initial hill height, kJ/mol")
    parser.add_argument("--metad-discard", type=float, default=0.2, help="fraction of the metadynamics run not reweighted")
    parser.add_argument("--blocks", type=int, default=10, help="blocks for the MD/metadynamics jackknife")
    parser.add_argument("--n-bootstrap", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (budget 3000, 20 bootstrap replicas)")
    args = vars(parser.parse_args())
    if args.pop("quick"):
        args.update(budget=[3000], n_bootstrap=20)
    main(**args)
