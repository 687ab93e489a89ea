"""``openmm-flowplugin diffuse``: a CV-biased diffusion sampler with exact weights, FES and basin ΔF."""

import click

from ._common import FINITE_POSITIVE, POSITIVE_INT, _user_errors, load_system, named_system_options

_HELP = """Train a diffusion sampler from energies alone (adjoint and corrector matching), pushed by a
well-tempered bias on two collective variables, then draw samples with exact importance weights for the
Boltzmann distribution and write the reweighted free-energy surface on the CVs.

CVs are NAME:ATOMS with 0-based atom indices: 4 atoms a torsion (e.g. --cv phi:4,6,8,14 --cv psi:6,8,14,16),
3 an angle, 2 a distance, AXIS@ATOM a Cartesian component (e.g. --cv x:x@0). Two torsions get a periodic grid
on [-pi, pi]; other CVs need --grid NAME:LO,HI. --basin NAME:LO,HI:LO,HI (repeatable) adds ΔF from the first
basin to each other one, with bootstrap errors.

Everything goes to OUTPUT: checkpoint.pt (run the command again to resume; to extend or resample a finished run,
with --overwrite: --iterations is the total),
results.json/results.md, fes.png (reweighted FES, and the well-tempered estimate labelled approximate),
fes.npz (the reweighted FES with its bootstrap errors), samples.npz, training_end_points.npz (the second half of
training's chain end points with exact weights; --pool-training adds them to the estimate) and bias.xml (the frozen
bias as an OpenMM CustomCVForce).

--coordinates internal runs the sampler on standardized Z-matrix bonds, angles and torsions, standardized on a short
MD run that also warm-starts it (--sigma-max and --sigma-min are then in standardized units, default 1.2 and 0.05);
cartesian (1.5 and 0.02 nm) suits the 2D test systems and a few atoms. The default, auto, takes internal for a
system that is one bonded molecule (unless a CV is a Cartesian component), cartesian otherwise, and a resumed run's
own. The weights are exact either way (see docs/diffusion.md for alanine dipeptide).
"""


@click.command(help=_HELP)
@named_system_options
@click.option("--cv", "cv_specs", multiple=True, required=True, help="A collective variable NAME:ATOMS (twice).")
@click.option("--grid", "grid_specs", multiple=True, help="Grid range of a non-periodic CV: NAME:LO,HI (its units).")
@click.option("--basin", "basin_specs", multiple=True, help="A basin NAME:LO,HI:LO,HI for ΔF (repeatable).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Output folder (resumed if it holds this run).")
@click.option("--overwrite", is_flag=True, help="Replace the results of a finished run (or any result files) in OUTPUT: to extend or "
                                               "resample a run in its folder.")
@click.option("--iterations", default=200, show_default=True, type=POSITIVE_INT, help="Training iterations (total).")
@click.option("--samples", default=8000, show_default=True, type=POSITIVE_INT, help="Weighted production samples.")
@click.option("--batch-size", default=128, show_default=True, type=POSITIVE_INT, help="Chains (energy evaluations) per iteration.")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=2), help="Euler-Maruyama steps per chain.")
@click.option("--sigma-max", default=None, type=FINITE_POSITIVE,
              help="Largest noise scale: nm (cartesian, default 1.5) or standardized units (internal, default 1.2).")
@click.option("--sigma-min", default=None, type=FINITE_POSITIVE,
              help="Smallest noise scale: nm (cartesian, default 0.02) or standardized units (internal, default 0.05).")
@click.option("--gamma", default=8.0, show_default=True, type=click.FloatRange(min=1.0, min_open=True), help="Bias factor γ.")
@click.option("--hill-height", default=0.02, show_default=True, type=FINITE_POSITIVE, help="kJ/mol per hill (one per chain end point).")
@click.option("--hill-width", default=0.2, show_default=True, type=FINITE_POSITIVE, help="Hill width in the CVs' units.")
@click.option("--coordinates", type=click.Choice(["auto", "cartesian", "internal"]), default="auto", show_default=True,
              help="The sampler's variables: Cartesian positions, or standardized internal coordinates; auto: internal for "
                   "a system that is one bonded molecule, Cartesian otherwise (the 2D model systems).")
@click.option("--rotor-scale", default=1.0, show_default=True, type=click.FloatRange(0.0, 3.14159),
              help="With internal coordinates (--coordinates internal, or auto on a molecule): least standardization spread (rad) of the torsions about the bonds of torsion CVs, "
                   "so the noise reaches their other basins; 0 keeps the MD run's spread.")
@click.option("--md-frames", default=None, type=click.IntRange(min=2),
              help="With internal coordinates: MD frames that standardize them and warm-start the buffer [default: 200].")
@click.option("--md-interval", default=None, type=POSITIVE_INT,
              help="With internal coordinates: MD steps (1 fs) between those frames [default: 50]; the steps count as energy evaluations.")
@click.option("--max-gradient-norm", default=20.0, show_default=True, type=FINITE_POSITIVE,
              help="Clip of each |grad u| (1/nm, u = U/kT) in the training target; the weights stay exact.")
@click.option("--pool-training/--no-pool-training", default=False, show_default=True,
              help="Pool the second half of training's chain end points (exact weights) with the samples for the FES and ΔF.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Root seed of every random stream.")
@click.option("--platform", default=None, help="OpenMM platform of the energy evaluations.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (loss, buffer ESS, bias height) [default: on a terminal].")
@_user_errors
def diffuse(molecular_system_options, cv_specs, grid_specs, basin_specs, output, overwrite, iterations, samples, batch_size, steps, sigma_max,
            sigma_min, gamma, hill_height, hill_width, coordinates, rotor_scale, md_frames, md_interval, max_gradient_norm, pool_training,
            seed, platform, progress):
    import sys

    from ..diffusion import DivergedTrainingError
    from ..diffusion.workflow import diffusion_free_energy_surface, parse_basin, parse_cv
    from ..errors import InvalidInputError

    cvs = dict(parse_cv(spec) for spec in cv_specs)
    if len(cvs) != 2 or len(cv_specs) != 2:
        raise InvalidInputError(f"give exactly two CVs with distinct names (--cv NAME:ATOMS twice), got {list(cv_specs)}.")
    grid_ranges = {}
    for spec in grid_specs:
        name, _, values = spec.partition(":")
        try:
            lo, hi = (float(v) for v in values.split(","))
        except ValueError:
            raise InvalidInputError(f"a grid range is NAME:LO,HI, got {spec!r}.") from None
        if name not in cvs or not lo < hi:
            raise InvalidInputError(f"--grid {spec!r}: name one of the CVs {sorted(cvs)} and give LO < HI.")
        grid_ranges[name] = (lo, hi)
    basins = dict(parse_basin(spec) for spec in basin_specs)
    if len(basins) != len(basin_specs):
        raise InvalidInputError(f"two --basin options share a name: {[parse_basin(spec)[0] for spec in basin_specs]}.")
    if len(basins) == 1:
        raise InvalidInputError("give at least two --basin options (ΔF is between basins), or none.")
    molecular_system = load_system(molecular_system_options)
    progress = sys.stderr.isatty() if progress is None else progress
    try:
        results = diffusion_free_energy_surface(molecular_system, cvs, output, grid_ranges=grid_ranges, basins=basins, n_iterations=iterations,
                                                n_samples=samples, bias_factor=gamma, hill_height=hill_height, hill_width=hill_width,
                                                sigma_max=sigma_max, sigma_min=sigma_min, n_steps=steps, batch_size=batch_size, seed=seed,
                                                platform=platform, progress=progress, max_gradient_norm=max_gradient_norm,
                                                coordinates=coordinates, rotor_scale=rotor_scale or None, md_frames=md_frames,
                                                md_interval=md_interval, pool_training=pool_training, overwrite=overwrite)
    except DivergedTrainingError as error:  # a setting the user can change: one line, not a traceback
        raise InvalidInputError(f"{error} On the command line: --sigma-max, --max-gradient-norm, and a new -o folder.") from None
    from pathlib import Path

    click.echo((Path(output) / "results.md").read_text())
    click.echo(f"results in {output}/ ({results['n_effective']:.0f} effective samples)")
