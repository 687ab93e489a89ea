"""Alanine dipeptide in vacuum: the phi/psi free-energy surface by the diffusion samplers, metadynamics and MD at equal budgets.

``alanine_dipeptide_vacuum`` (22 atoms, no constraints, 300 K), CVs phi = (4, 6, 8, 14) and psi = (6, 8, 14, 16).
Each method gets the same number of energy/force evaluations (``--budget``):

(a) the CV-biased diffusion sampler in internal coordinates (``InternalCoordinateSpace`` standardized on a short
    MD run whose frames also warm-start the replay buffer: its steps count; the torsions that turn phi and psi get a
    spread of at least ``--rotor-scale`` rad), ``WellTemperedBias`` on phi/psi
    (periodic grid, gamma 8, hill width 0.2 rad), frozen for production; production samples take
    ``--sample-fraction`` of the budget; exact discrete-chain importance weights;
(a'') the same run's samples pooled with the end points of the second half of its training chains (each with the
    exact weight of the controller that drew it: ``DiffusionSampler.training_samples``), at no extra evaluation;
(a') the same run's final bias read as F = -gamma/(gamma-1) V (approximate);
(b) the same sampler without a bias, exact weights;
(c) OpenMM ``app.Metadynamics`` on the same CVs (``CustomTorsionForce`` as periodic ``BiasVariable``), gamma 8,
    width 0.2 rad, ``--metad-height`` kJ/mol every ``--metad-frequency`` steps; frames after the first
    ``--metad-discard`` reweighted by exp(+beta V_final) (approximate: no c(t)); one evaluation per step plus one
    bias-group energy per hill;
(c') the same run's F = -gamma/(gamma-1) V_final (approximate);
(d) plain Langevin MD, unweighted frames;
(e) the sampler of (a), trained as there, used as a Monte Carlo proposal (``DiffusionProposal``) in MD:
    ``FlowMCIntegrator`` (a jump every ``JUMP_INTERVAL`` steps, exact Metropolis-Hastings with random log q
    estimates) spends the evaluations (a) spends on production samples; unweighted frames, jackknife errors.
MD and metadynamics: LangevinMiddle, 1 fs, friction 1/ps, on the platform measured fastest here (``PLATFORMS``).
``--md-budgets`` adds rows for (c), (c') and (d) alone at other budgets, to find where they reach a given error.
``--seeds N`` repeats every method with N seeds (``--seed``, ``--seed`` + 10, ...; one reference for all) and adds a table
of their spread: mean ± standard deviation of each error, how many seeds reach the FES target (``--fes-target``, 2 kJ/mol), and the
root-mean-square deviation of Delta F from the reference beside the mean error bar the runs quoted.

``--system alanine_dipeptide_implicit`` runs the same on the implicit-solvent variant (ff96 + OBC1, the WT-ASBS
paper's system; its MD is ~15x slower on these CPUs, so a secondary run with a shorter reference).

Reference (computed once per system, cached in ``--output``/reference_SYSTEM.npz; the benchmark's rows never reuse its runs):
well-tempered metadynamics on phi/psi for ``--reference-metad-ns`` (gamma 8, 1.2 kJ/mol every 500 steps,
0.2 rad) builds a bias, which is then frozen (``simulation.step`` adds no hills) for ``--reference-ns`` of MD
under the static bias; its frames are reweighted by exp(+beta V), which is exact for a static bias. Its own
uncertainty is reported as the FES error between its two halves and a jackknife error of Delta F.

Reported: FES error (``analysis.fes.fes_error``: population-weighted mean absolute difference over phi/psi bins
within 20 kJ/mol of the reference minimum, after aligning the means; an empty bin counts 20 kJ/mol), the same
with every such bin weighted equally (C7ax holds ~1 % of the population, so the first barely sees it) — both
also printed for a constant surface, the score of an estimate made without sampling —,
Delta F(C7eq -> C7ax) with its error (diffusion: bootstrap over independent samples; MD/metadynamics:
delete-one-block jackknife), energy evaluations, CPU seconds (``time.process_time`` for producing the samples and
weights: MD, training, sampling; not the analysis) and the Kish ESS of the exact weights.

    python benchmarks/bench_diffusion_alanine.py [--budget 100000 200000 500000] [--md-budgets 1000000 5000000] [--seeds 1] [--quick]
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import openmm
import torch
from bench_diffusion import block_delta_f, fmt, in_box, tail_summary
from openmm import app, unit

from openmm_flowplugin import systems
from openmm_flowplugin.analysis.fes import basin_free_energy_difference, fes_error, free_energy_surface
from openmm_flowplugin.diffusion import DiffusionProposal, DiffusionSampler, InternalCoordinateSpace, NoiseSchedule, WellTemperedBias
from openmm_flowplugin.diffusion.workflow import DEFAULT_SCHEDULES, _md_frames
from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.geometry import Torsion
from openmm_flowplugin.integrators import FlowMCIntegrator

PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)
PI = math.pi
BASINS = {"C7eq": ((-PI, 0.0), (0.0, PI + 1e-9)), "C7ax": ((0.0, PI + 1e-9), (-PI, 0.0))}
BIAS_FACTOR, HILL_WIDTH = 8.0, 0.2  # rad, as in the WT-ASBS alanine configuration
DIFFUSION = dict(hidden=128, n_layers=3, batch_size=128, n_adjoint_steps=50, n_corrector_steps=50, training_batch_size=256)
SCHEDULE = (*DEFAULT_SCHEDULES["internal"], 50)  # sigma_max, sigma_min in standardized units, Euler-Maruyama steps
DIFFUSION_HILL_HEIGHT = 0.02  # kJ/mol per chain end point
POOL_DISCARD = 0.5  # (a''): training iterations whose end points are left out, from the start
WARM_START_FRAMES = 200  # MD frames for standardization and the buffer (--warm-start-steps of MD, 10 ps by default)
TIMESTEP_FS, FRICTION = 1.0, 1.0
JUMP_INTERVAL = 10  # MD steps per diffusion jump in (e)
SEED_STRIDE = 10  # seeds of successive --seeds runs; one run uses seed ... seed + 5 for its methods
FES_TARGET = 2.0  # kJ/mol, the issue's goal
TABLE_HEADER = ("| budget | method | FES error (kJ/mol) | FES error, bins equal (kJ/mol) | ΔF(C7eq→C7ax) ± err (kJ/mol) | z vs reference | "
                "weights' tail (C7eq / C7ax) | energy evaluations | CPU s | ESS | run |")
SUMMARY_HEADER = ("| budget | method | FES error (kJ/mol), mean ± sd | seeds ≤ {target:g} | FES error, bins equal | seeds ≤ {target:g} | "
                  "ΔF(C7eq→C7ax), mean ± sd (kJ/mol) | ΔF: rms from reference / mean quoted error | CPU s, mean |")
# The faster OpenMM platform per system, measured here on one thread (ns/day of 1 fs Langevin steps, CPU time):
# vacuum Reference 11,000 vs CPU 1,035; OBC1 implicit Reference 91 vs CPU 456.
PLATFORMS = {"alanine_dipeptide_vacuum": "Reference", "alanine_dipeptide_implicit": "CPU"}


def torsions(positions):
    """(phi, psi) in (-pi, pi] for positions (n, 22, 3) nm."""
    x = torch.as_tensor(np.asarray(positions, dtype=np.float64))
    return np.stack([Torsion(*PHI)(x).numpy(), Torsion(*PSI)(x).numpy()], -1)


def bias_variables():
    variables = []
    for atoms in (PHI, PSI):
        force = openmm.CustomTorsionForce("theta")
        force.addTorsion(*atoms, [])
        variables.append(app.BiasVariable(force, -PI, PI, HILL_WIDTH, periodic=True))
    return variables


# ---------------------------------------------------------------------------------------------- MD and metadynamics
def langevin(molecular_system, n_steps, stride, seed, metad=None, n_static_steps=0):
    """Plain MD, or metadynamics (``metad`` = (height kJ/mol, frequency)) optionally followed by MD under the frozen bias.

    Returns frames' (phi, psi), positions, and for a static phase V at its frames (kJ/mol).
    """
    system = openmm.XmlSerializer.clone(molecular_system.system)
    metadynamics = None
    if metad is not None:
        height, frequency = metad
        metadynamics = app.Metadynamics(system, bias_variables(), molecular_system.temperature, BIAS_FACTOR,
                                        height * unit.kilojoule_per_mole, frequency)
    integrator = openmm.LangevinMiddleIntegrator(molecular_system.temperature, FRICTION / unit.picosecond, TIMESTEP_FS * unit.femtosecond)
    integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(molecular_system.topology, system, integrator, openmm.Platform.getPlatformByName(PLATFORMS[molecular_system.name]),
                                {"Threads": "1"} if PLATFORMS[molecular_system.name] == "CPU" else {})
    simulation.context.setPositions(molecular_system.positions)
    simulation.context.setVelocitiesToTemperature(molecular_system.temperature, seed)
    positions = []
    for _ in range(n_steps // stride):
        if metadynamics is None:
            simulation.step(stride)
        else:
            metadynamics.step(simulation, stride)
        positions.append(simulation.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    static_positions, static_bias = [], []
    if n_static_steps:
        group = {metadynamics._force.getForceGroup()}
        for _ in range(n_static_steps // stride):
            simulation.step(stride)  # no hills: the bias is frozen
            state = simulation.context.getState(getPositions=True, getEnergy=True, groups=group)
            static_positions.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
            static_bias.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    return dict(positions=np.array(positions), static_positions=np.array(static_positions), static_bias=np.array(static_bias),
                metad=metadynamics, simulation=simulation)


def bias_at(run, positions):
    """V_final (kJ/mol) of a metadynamics run at ``positions``, evaluated by OpenMM (its force group only)."""
    context, group = run["simulation"].context, {run["metad"]._force.getForceGroup()}
    values = np.empty(len(positions))
    for i, x in enumerate(positions):
        context.setPositions(x)
        values[i] = context.getState(getEnergy=True, groups=group).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return values


def reference(molecular_system, output, metad_ns, static_ns, seed):
    """Frames (phi, psi) and exact log weights beta V of the static-bias reference run (cached in ``output``)."""
    path = Path(output) / f"reference_{molecular_system.name}.npz"
    settings = np.array([metad_ns, static_ns, seed, BIAS_FACTOR, HILL_WIDTH])
    if path.exists():
        cached = np.load(path)
        if np.array_equal(cached["settings"], settings):
            return cached["s"], cached["log_w"], float(cached["cpu"])
        print(f"{path} was computed with other settings: recomputing.")
    start = time.process_time()
    steps_per_ns = int(round(1e6 / TIMESTEP_FS))
    run = langevin(molecular_system, int(metad_ns * steps_per_ns), 1000, seed, metad=(1.2, 500),
                   n_static_steps=int(static_ns * steps_per_ns))
    s = torsions(run["static_positions"])
    log_w = run["static_bias"] / (molecular_system.temperature * unit.MOLAR_GAS_CONSTANT_R).value_in_unit(unit.kilojoule_per_mole)
    cpu = time.process_time() - start
    Path(output).mkdir(parents=True, exist_ok=True)
    np.savez(path, s=s, log_w=log_w, cpu=cpu, settings=settings)
    return s, log_w, cpu


# ---------------------------------------------------------------------------------------------- diffusion
def train_sampler(molecular_system, budget, sample_fraction, biased, seed, rotor_scale=1.0, checkpoint=None, warm_start_steps=10000,
                  settings=None):
    """The diffusion sampler of (a) (``biased``) or (b), trained on ``1 - sample_fraction`` of the budget after the warm start.

    The warm start is ``warm_start_steps`` of MD, of which every ``warm_start_steps // WARM_START_FRAMES``-th frame is kept.
    ``settings``: the sampler's network and training settings (default ``DIFFUSION``).

    ``checkpoint``: where training is saved and resumed (default: a temporary folder, a fresh run each time).
    """
    start = time.process_time()
    settings = DIFFUSION if settings is None else settings
    interval = warm_start_steps // WARM_START_FRAMES
    frames = _md_frames(molecular_system, WARM_START_FRAMES, interval, seed, PLATFORMS[molecular_system.name])
    md_evaluations = WARM_START_FRAMES * interval
    rotors = [PHI, PSI] if rotor_scale else []  # the torsions that turn phi and psi: spread >= rotor_scale rad
    space = InternalCoordinateSpace.from_positions(molecular_system.topology, frames, rotors=rotors, rotor_scale=rotor_scale or 1.0)
    bias = None
    if biased:
        n = int(math.ceil(2 * PI / (HILL_WIDTH / 4))) + 1
        bias = WellTemperedBias([Torsion(*PHI), Torsion(*PSI)], lower=(-PI, -PI), upper=(PI, PI), n_nodes=(n, n), periodic=True,
                                hill_width=HILL_WIDTH, hill_height=DIFFUSION_HILL_HEIGHT, bias_factor=BIAS_FACTOR,
                                temperature=molecular_system.temperature)
    sampler = DiffusionSampler(molecular_system, bias=bias, schedule=NoiseSchedule(*SCHEDULE), coordinates=space, seed=seed,
                               platform=PLATFORMS[molecular_system.name], **settings)
    if checkpoint is None or not Path(checkpoint).exists():
        sampler.warm_start(frames)
    training = budget - md_evaluations - WARM_START_FRAMES  # the warm start evaluates each frame once (also when resumed)
    n_iterations = max(1, int(training * (1.0 - sample_fraction)) // settings["batch_size"])
    with tempfile.TemporaryDirectory() as folder:  # checkpoints as a user's run writes them
        sampler.train(n_iterations, checkpoint=checkpoint or Path(folder) / "checkpoint.pt", checkpoint_interval=100)
    return dict(sampler=sampler, start=frames[-1], cpu=time.process_time() - start, evaluations=sampler.n_energy_evaluations + md_evaluations,
                production_evaluations=budget - md_evaluations - sampler.n_energy_evaluations,
                detail=f"{md_evaluations} MD + {n_iterations} it. x {settings['batch_size']}")


def run_diffusion(molecular_system, budget, sample_fraction, biased, seed, rotor_scale=1.0, warm_start_steps=10000, settings=None):
    start = time.process_time()
    training = train_sampler(molecular_system, budget, sample_fraction, biased, seed, rotor_scale, warm_start_steps=warm_start_steps,
                             settings=settings)
    sampler, n_samples = training["sampler"], training["production_evaluations"]
    samples = sampler.sample(n_samples)
    result = dict(s=torsions(samples.positions), log_w=samples.log_weights, evaluations=training["evaluations"] + n_samples,
                  cpu=time.process_time() - start, ess=samples.n_effective, invalid=sampler.n_invalid, bias=sampler.bias, training=training,
                  detail=f"{training['detail']} + {n_samples} samples")
    if biased:  # the same evaluations, every end point of the second half of training pooled with the samples
        pooled = samples.pooled(sampler.training_samples(discard=POOL_DISCARD))
        result["pooled"] = dict(s=pooled.cv_values, log_w=pooled.log_weights, evaluations=result["evaluations"], cpu=result["cpu"],
                                ess=pooled.n_effective,
                                detail=f"{result['detail']} + {len(pooled.log_weights) - n_samples} training end points")
    return result


def run_jumps(molecular_system, training, seed):
    """(e): MD with jumps proposed by the trained sampler, for the evaluations (a) spent on samples (exact, no weights)."""
    start = time.process_time()
    proposal = DiffusionProposal(training["sampler"], seed=seed)
    integrator = FlowMCIntegrator(molecular_system.temperature, FRICTION / unit.picosecond, TIMESTEP_FS * unit.femtosecond, proposal,
                                  jump_interval=JUMP_INTERVAL, system=molecular_system.system, seed=seed + 1)
    integrator.setRandomNumberSeed(seed + 2)  # Langevin noise and acceptance uniforms (OpenMM's default, 0, draws a fresh seed)
    platform = PLATFORMS[molecular_system.name]
    simulation = app.Simulation(molecular_system.topology, molecular_system.system, integrator, openmm.Platform.getPlatformByName(platform),
                                {"Threads": "1"} if platform == "CPU" else {})
    simulation.context.setPositions(training["start"])
    simulation.context.setVelocitiesToTemperature(molecular_system.temperature, seed)
    n_steps = training["production_evaluations"] * JUMP_INTERVAL // (JUMP_INTERVAL + 1)  # + one energy per jump
    stride = max(10, n_steps // 20000)  # as the MD rows
    positions = []
    for _ in range(n_steps // stride):
        simulation.step(stride)
        positions.append(simulation.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    steps = stride * (n_steps // stride)
    return dict(s=torsions(np.array(positions)), evaluations=training["evaluations"] + steps + integrator.n_proposed,
                cpu=training["cpu"] + time.process_time() - start,
                detail=f"{training['detail']} (as (a)) + {steps} MD steps with {integrator.n_proposed} jumps, "
                       f"{integrator.n_accepted / max(integrator.n_proposed, 1):.1%} accepted")


# ---------------------------------------------------------------------------------------------- estimates
def estimate(result, edges, ref, temperature, kT, n_blocks, n_bootstrap, seed):
    s, log_w = result["s"], result.get("log_w", np.zeros(len(result["s"])))
    fes = free_energy_surface(s, log_w, edges, temperature, n_bootstrap=0)
    result["fes_error"] = fes_error(fes.free_energy, ref["f"], ref["p"])
    result["fes_error_uniform"] = fes_error(fes.free_energy, ref["f"], ref["uniform"])
    if "ess" in result:  # independent samples: bootstrap
        try:
            delta = basin_free_energy_difference(s, log_w, BASINS, "C7eq", "C7ax", temperature, n_bootstrap=n_bootstrap, seed=seed)
            result["delta_f"], result["delta_f_error"] = delta.value, delta.error
            result["tail"] = tail_summary(delta)
        except InvalidInputError:  # a basin without weight
            result["delta_f"], result["delta_f_error"] = math.nan, math.nan
    else:
        result["delta_f"], result["delta_f_error"] = block_delta_f(s, log_w, {"A": BASINS["C7eq"], "B": BASINS["C7ax"]}, kT, n_blocks)
    return result


def well_tempered(bias_on_grid, edges, ref, kT, sub=5):
    """FES error and Delta F of F = -g/(g-1) V, V given as a function of (n, 2) CV values, Boltzmann-averaged in each bin."""
    fine = [np.concatenate([np.linspace(a, b, sub + 1)[:-1] + 0.5 * (b - a) / sub for a, b in zip(e[:-1], e[1:])]) for e in edges]
    X, Y = np.meshgrid(*fine, indexing="ij")
    s = np.stack([X.ravel(), Y.ravel()], -1)
    f = -BIAS_FACTOR / (BIAS_FACTOR - 1.0) * bias_on_grid(s)
    boltzmann = np.exp(-(f - f.min()) / kT)
    p = boltzmann.reshape(len(edges[0]) - 1, sub, len(edges[1]) - 1, sub).sum(axis=(1, 3))
    f_bins = -kT * np.log(p)
    pa, pb = (boltzmann[in_box(s, BASINS[name])].sum() for name in ("C7eq", "C7ax"))
    errors = [fes_error(f_bins - f_bins.min(), ref["f"], ref[weights]) for weights in ("p", "uniform")]
    return errors, -kT * math.log(pb / pa)


def metad_bias_on_cvs(run):
    """V_final(phi, psi): from OpenMM's own grid, via metadynamics' free-energy estimate F = -(T + dT)/dT V."""
    free_energy = run["metad"].getFreeEnergy().value_in_unit(unit.kilojoule_per_mole)  # shape (psi, phi) per OpenMM's layout
    bias = -free_energy * (BIAS_FACTOR - 1.0) / BIAS_FACTOR
    n = bias.shape[0]  # nodes at linspace(-pi, pi, n) on both axes, as OpenMM's _addGaussian places them

    def value(s):  # nearest node: the grid (158 nodes, 0.04 rad) is far finer than the 0.26 rad bins
        i = np.clip(np.rint((s[:, 0] + PI) / (2 * PI) * (n - 1)).astype(int), 0, n - 1)
        j = np.clip(np.rint((s[:, 1] + PI) / (2 * PI) * (n - 1)).astype(int), 0, n - 1)
        return bias[j, i]

    return value


def row(budget, method, r, ref_df):
    err = r["delta_f_error"]
    z = (r["delta_f"] - ref_df) / err if np.isfinite(err) and err > 0 else math.nan
    if not np.isfinite(r["delta_f"]):
        delta = "a basin never visited"
    else:
        delta = fmt(r["delta_f"]) + (" ± ∞" if err == math.inf else "" if not np.isfinite(err) else f" ± {err:.2f}")
    return (f"| {budget} | {method} | {fmt(r['fes_error'])} | {fmt(r['fes_error_uniform'])} | {delta} | {fmt(z, 1)} | {r.get('tail', '–')} | {r['evaluations']} | {r['cpu']:.1f} | "
            f"{fmt(r.get('ess'), 0)} | {r['detail']} |")


def md_rows(molecular_system, budget, edges, ref, temperature, kT, args, seed):
    """(c), (c') and (d) at one budget."""
    frequency = args.metad_frequency
    n_steps = frequency * (budget // (frequency + 1))  # + one bias-group energy per hill
    stride = max(10, n_steps // 20000)
    start = time.process_time()
    run = langevin(molecular_system, n_steps, stride, seed, metad=(args.metad_height, frequency))
    kept = run["positions"][int(args.metad_discard * len(run["positions"])):]
    reweighted = dict(s=torsions(kept), log_w=bias_at(run, kept) / kT, evaluations=n_steps + n_steps // frequency,
                      detail=f"{n_steps} steps, {n_steps // frequency} hills, last {1 - args.metad_discard:.0%} reweighted")
    reweighted["cpu"] = time.process_time() - start
    rows = {"(c) metadynamics, reweighted by final bias": estimate(reweighted, edges, ref, temperature, kT, args.blocks, 0, seed)}
    fes_err, delta_f = well_tempered(metad_bias_on_cvs(run), edges, ref, kT)
    rows["(c') metadynamics, -g/(g-1)V"] = dict(fes_error=fes_err[0], fes_error_uniform=fes_err[1], delta_f=delta_f, delta_f_error=math.nan, cpu=reweighted["cpu"],
                                               evaluations=reweighted["evaluations"], detail=f"{n_steps} steps, final bias")
    start = time.process_time()
    md = langevin(molecular_system, budget, stride, seed + 1)
    md = dict(s=torsions(md["positions"]), evaluations=budget, cpu=time.process_time() - start, detail=f"{budget} steps")
    rows["(d) plain MD"] = estimate(md, edges, ref, temperature, kT, args.blocks, 0, seed)
    return rows


def main(args):
    torch.set_num_threads(1)
    molecular_system = systems.get(args.system)
    temperature = molecular_system.temperature
    kT = (temperature * unit.MOLAR_GAS_CONSTANT_R).value_in_unit(unit.kilojoule_per_mole)
    edges = [np.linspace(-PI, PI, args.bins + 1)] * 2
    print(f"Settings: seed {args.seed}; CVs phi {PHI}, psi {PSI}; {args.bins}x{args.bins} bins; basins {BASINS}; diffusion: "
          f"NoiseSchedule{SCHEDULE} (standardized internal coordinates, rotor scale {args.rotor_scale} rad), {diffusion_settings(args)}, warm start {args.warm_start_steps} MD steps ({WARM_START_FRAMES} frames), "
          f"{args.sample_fraction:.0%} of the training budget as production samples, bias gamma {BIAS_FACTOR}, width {HILL_WIDTH} rad, "
          f"{DIFFUSION_HILL_HEIGHT} kJ/mol per end point; metadynamics: gamma {BIAS_FACTOR}, width {HILL_WIDTH} rad, "
          f"{args.metad_height} kJ/mol every {args.metad_frequency} steps, first {args.metad_discard:.0%} not reweighted; "
          f"MD: LangevinMiddle {TIMESTEP_FS} fs, {FRICTION}/ps, {PLATFORMS[args.system]} platform.\n", flush=True)

    s_ref, log_w_ref, ref_cpu = reference(molecular_system, args.output, args.reference_metad_ns, args.reference_ns, args.seed + 100)
    ref_fes = free_energy_surface(s_ref, log_w_ref, edges, temperature, n_bootstrap=0)
    w = np.exp(log_w_ref - log_w_ref.max())
    p, _, _ = np.histogram2d(s_ref[:, 0], s_ref[:, 1], bins=edges, weights=w)
    ref = dict(f=ref_fes.free_energy, p=p / p.sum(), uniform=np.isfinite(ref_fes.free_energy).astype(float))
    half = len(s_ref) // 2
    halves = [free_energy_surface(s_ref[part], log_w_ref[part], edges, temperature, n_bootstrap=0).free_energy
              for part in (slice(0, half), slice(half, None))]
    ref_df, ref_df_err = block_delta_f(s_ref, log_w_ref, {"A": BASINS["C7eq"], "B": BASINS["C7ax"]}, kT, 20)
    print(f"Reference: {args.reference_metad_ns} ns well-tempered metadynamics, then {args.reference_ns} ns under the frozen bias "
          f"({len(s_ref)} frames, exact static-bias weights; {ref_cpu:.0f} CPU s). Delta F(C7eq -> C7ax) = {ref_df:.2f} ± "
          f"{ref_df_err:.2f} kJ/mol (jackknife, 20 blocks); FES error between its halves {fes_error(halves[0], halves[1], ref['p']):.2f} "
          f"kJ/mol ({fes_error(halves[0], halves[1], ref['uniform']):.2f} with bins equal); {int(np.sum(ref['f'] <= 20))} bins within "
          f"20 kJ/mol.", flush=True)
    constant = [fes_error(np.zeros_like(ref["f"]), ref["f"], ref[weights]) for weights in ("p", "uniform")]
    print(f"A constant surface (no sampling at all) scores {constant[0]:.2f} kJ/mol ({constant[1]:.2f} with bins equal): an estimate "
          f"above that does worse than no sampling; one just below it may still be nearly flat.\n", flush=True)

    seeds = [args.seed + SEED_STRIDE * i for i in range(args.seeds)]
    results = {}  # (budget, method) -> one result per seed
    for seed in seeds:
        runs = [(budget, diffusion_and_md_rows(molecular_system, budget, edges, ref, temperature, kT, args, seed)) for budget in args.budget]
        runs += [(budget, md_rows(molecular_system, budget, edges, ref, temperature, kT, args, seed + 2)) for budget in args.md_budgets]
        for budget, rows in runs:
            for method, r in rows.items():
                r["detail"] += f", seed {seed}"
                results.setdefault((budget, method), []).append(r)
    order = sorted(results, key=lambda key: key[0])  # stable: methods keep their order within a budget
    print(TABLE_HEADER)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(row(budget, method, r, ref_df) for budget, method in order for r in results[budget, method]), flush=True)
    if len(seeds) > 1:
        print(f"\nOver seeds {', '.join(map(str, seeds))} (the reference is the same for all):\n")
        print(SUMMARY_HEADER.format(target=args.fes_target))
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(summary_row(budget, method, results[budget, method], ref_df, args.fes_target) for budget, method in order), flush=True)
        print(f"\nFor scale: a constant surface scores {constant[0]:.2f} kJ/mol ({constant[1]:.2f} with bins equal).", flush=True)


def diffusion_and_md_rows(molecular_system, budget, edges, ref, temperature, kT, args, seed):
    """(a), (a'), (e), (b), (c), (c') and (d) at one budget and seed."""
    runs = {}
    for key, biased, method_seed in (("(a) diffusion + WT bias (exact weights)", True, seed),
                                     ("(b) diffusion, no bias (exact weights)", False, seed + 1)):
        result = run_diffusion(molecular_system, budget, args.sample_fraction, biased, method_seed, args.rotor_scale, args.warm_start_steps,
                               diffusion_settings(args))
        np.savez(Path(args.output) / f"samples_{args.system}_{budget}_{'biased' if biased else 'unbiased'}_seed{method_seed}_rotor{args.rotor_scale:g}.npz",
                 s=result["s"], log_w=result["log_w"])  # for re-analysis without a rerun
        runs[key] = estimate(result, edges, ref, temperature, kT, args.blocks, args.n_bootstrap, method_seed)
        print(f"  seed {seed}, budget {budget}, {key}: {result['detail']}, {result['cpu']:.0f} CPU s, ESS {result['ess']:.1f}", flush=True)
        if biased:
            fes_err, delta_f = well_tempered(lambda s: result["bias"].value_at(s), edges, ref, kT)
            runs["(a'') the same, with training end points (exact weights)"] = estimate(result["pooled"], edges, ref, temperature, kT,
                                                                                       args.blocks, args.n_bootstrap, method_seed)
            runs["(a') diffusion's bias, -g/(g-1)V"] = dict(fes_error=fes_err[0], fes_error_uniform=fes_err[1], delta_f=delta_f,
                                                          delta_f_error=math.nan,
                                                          evaluations=result["evaluations"], cpu=result["cpu"],
                                                          detail=f"{result['detail']}, final bias")
            jumps = run_jumps(molecular_system, result["training"], method_seed + 3)
            runs["(e) MD + jumps from the sampler of (a) (exact MH)"] = estimate(jumps, edges, ref, temperature, kT, args.blocks, 0, method_seed)
            print(f"  seed {seed}, budget {budget}, (e): {jumps['detail']}, {jumps['cpu']:.0f} CPU s", flush=True)
    runs.update(md_rows(molecular_system, budget, edges, ref, temperature, kT, args, seed + 2))
    return runs


def diffusion_settings(args):
    """``DIFFUSION`` with the chains per iteration and gradient steps per refill given on the command line."""
    return dict(DIFFUSION, batch_size=args.chains, n_adjoint_steps=args.gradient_steps, n_corrector_steps=args.gradient_steps)


def summary_row(budget, method, results, ref_df, target=FES_TARGET):
    """One budget and method over seeds: mean ± standard deviation, and how many seeds reach the FES target."""
    def spread(key):
        values = np.array([r[key] for r in results], dtype=float)
        finite = values[np.isfinite(values)]
        if len(finite) == 0:
            return "–"
        text = f"{finite.mean():.2f} ± {finite.std(ddof=1):.2f}" if len(finite) > 1 else f"{finite[0]:.2f}"
        return text + (f" ({len(values) - len(finite)} of {len(values)} without a value)" if len(finite) < len(values) else "")

    def reached(key):
        return f"{sum(r[key] <= target for r in results)} of {len(results)}"

    delta = np.array([r["delta_f"] for r in results], dtype=float)
    rms = math.sqrt(np.mean((delta[np.isfinite(delta)] - ref_df) ** 2)) if np.isfinite(delta).any() else math.nan
    errors = np.array([r["delta_f_error"] for r in results], dtype=float)
    errors = errors[~np.isnan(errors)]  # an infinite jackknife error (a basin missing from a block) stays
    quoted = "–" if len(errors) == 0 else "∞" if np.isinf(errors).any() else fmt(errors.mean())
    return (f"| {budget} | {method} | {spread('fes_error')} | {reached('fes_error')} | {spread('fes_error_uniform')} | "
            f"{reached('fes_error_uniform')} | {spread('delta_f')} | {fmt(rms)} / {quoted} | {np.mean([r['cpu'] for r in results]):.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="alanine_dipeptide_vacuum", choices=["alanine_dipeptide_vacuum", "alanine_dipeptide_implicit"],
                        help="vacuum (main run) or OBC1 implicit solvent (WT-ASBS's system; ~15x slower MD here: the CUDA case)")
    parser.add_argument("--budget", type=int, nargs="*", default=[100000, 200000, 500000],
                        help="energy evaluations per method, every method (none: only the --md-budgets rows)")
    parser.add_argument("--md-budgets", type=int, nargs="*", default=[1000000, 5000000], help="extra budgets for metadynamics and MD only (larger or smaller)")
    parser.add_argument("--sample-fraction", type=float, default=0.25, help="share of the diffusion budget (after warm start) for samples")
    parser.add_argument("--warm-start-steps", type=int, default=10000,
                        help=f"MD steps (1 fs) that standardize the sampler's coordinates and fill its buffer, counted in its budget; "
                             f"a multiple of {WARM_START_FRAMES}")
    parser.add_argument("--chains", type=int, default=DIFFUSION["batch_size"],
                        help="chains (energy evaluations) per training iteration: fewer means more iterations for the same budget")
    parser.add_argument("--gradient-steps", type=int, default=DIFFUSION["n_adjoint_steps"],
                        help="adjoint-matching and corrector-matching steps per iteration (each): more training per evaluation, more CPU")
    parser.add_argument("--rotor-scale", type=float, default=1.0,
                        help="least standardization spread (rad) of the Z-matrix torsions that turn phi and psi; 0: the MD run's spread")
    parser.add_argument("--bins", type=int, default=24, help="bins per torsion for the FES")
    parser.add_argument("--metad-frequency", type=int, default=500, help="steps between hills")
    parser.add_argument("--metad-height", type=float, default=1.2, help="initial hill height, kJ/mol")
    parser.add_argument("--metad-discard", type=float, default=0.2, help="fraction of the metadynamics run not reweighted")
    parser.add_argument("--reference-metad-ns", type=float, default=10.0)
    parser.add_argument("--reference-ns", type=float, default=40.0, help="static-bias MD for the reference")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--n-bootstrap", type=int, default=200)
    parser.add_argument("--output", default="benchmarks/results/diffusion_alanine", help="folder of the cached reference")
    parser.add_argument("--fes-target", type=float, default=FES_TARGET,
                        help="FES error (kJ/mol) whose seeds the summary counts (default: the issue's 2)")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--seeds", type=int, default=1,
                        help=f"independent runs of every method (seeds --seed, --seed + {SEED_STRIDE}, ...) and a table of their spread")
    parser.add_argument("--quick", action="store_true", help="smoke run: budget 20000, no extra MD budgets, a 0.2 + 0.5 ns reference")
    arguments = parser.parse_args()
    if not 1 <= arguments.seeds <= 100 // SEED_STRIDE - 1:  # the reference runs with seed + 100
        parser.error(f"--seeds {arguments.seeds}: give 1 to {100 // SEED_STRIDE - 1} runs")
    if arguments.warm_start_steps < WARM_START_FRAMES or arguments.warm_start_steps % WARM_START_FRAMES:
        parser.error(f"--warm-start-steps {arguments.warm_start_steps}: give a positive multiple of {WARM_START_FRAMES} (one MD frame kept per "
                     f"{WARM_START_FRAMES}th of the run)")
    if arguments.quick:
        arguments.budget, arguments.md_budgets, arguments.n_bootstrap = [20000], [], 20
        arguments.reference_metad_ns, arguments.reference_ns = 0.2, 0.5
        arguments.output = str(Path(arguments.output) / "quick")
    if arguments.chains < 1 or arguments.gradient_steps < 0:
        parser.error(f"--chains {arguments.chains} --gradient-steps {arguments.gradient_steps}: give at least one chain and no "
                     "negative steps")
    least_budget = arguments.warm_start_steps + WARM_START_FRAMES + 2 * arguments.chains  # warm start, one iteration, samples
    if any(budget < least_budget for budget in arguments.budget):
        parser.error(f"--budget {min(arguments.budget)}: the diffusion rows need at least {least_budget} evaluations with "
                     f"--warm-start-steps {arguments.warm_start_steps}")
    if not arguments.budget and not arguments.md_budgets:
        parser.error("--budget and --md-budgets are both empty: give at least one budget")
    main(arguments)
