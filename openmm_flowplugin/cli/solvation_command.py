"""``openmm-flowplugin solvation``: the solvation free energy of a molecule or an LJ preset, by alchemical MBAR."""

import click

from ..errors import InvalidInputError
from ._common import FINITE_POSITIVE, POSITIVE_INT, _user_errors

_HELP = """Solvation free energy of a molecule (--smiles, --sdf, --mol2 [--frcmod], --prmtop/--inpcrd) or a --preset
(lj, lj-paper, methane, water) by the alchemical route: openmmtools replica exchange over the λ states of
each leg (solvent; vacuum for molecules), MBAR with pymbar. Molecules are parametrized with GAFF2 (or --forcefield
gaff) and AM1-BCC (or a mol2's own charges) through AmberTools (pip install 'openmm_flowplugin[solvation]') and
solvated in TIP3P; the options that decide the Hamiltonian (--temperature, --nvt, --cutoff, --switch-distance,
--no-dispersion-correction, --constraints, --hydrogen-mass, --timestep) are recorded in results.json. A charged
solute is refused unless --allow-charged (counter-ions; no finite-size or neutralization corrections).

Everything goes to OUTPUT: each leg's openmmtools storage (solvent.nc, vacuum.nc), results.json,
results.md, overlap.png (MBAR overlap) and dudl.png (<du/dlambda> against lambda at each state, in kT, from
the stored configurations; neural TI's <du/dt> at its nodes on the same axes). Run the same command again to resume an interrupted run or extend it
(--iterations is the total); storage of another molecule or other settings is refused.

--method neural-ti runs neural thermodynamic integration of the solvent leg: OpenMM MD at the two end
states, a learned time-dependent potential (one learned pair function per class of solute-solvent atom pair;
for a solute with charges the sterics come on over t in [0, 0.8], then the charges) trained by target score
matching, then replica exchange over its --nodes values of t and MBAR (exact for any learned potential, given
overlap); a molecule's vacuum leg runs by the MBAR route (vacuum.nc, shared with --method mbar). Thermodynamic integration over the same samples (trapezoid of <du/dt> over the nodes, with its
statistical and quadrature errors) is reported beside it, and the papers' amortized estimator, labelled
approximate; results in neural_ti.json, neural_ti.md and neural_ti_overlap.png (samples and model are kept and
reused for the same --samples and --train-steps). --method both runs both routes.
"""


def _nodes(ctx, param, value):
    from ..freeenergy.neural_ti import parse_nodes

    try:
        nodes = parse_nodes(value)
    except InvalidInputError as error:
        raise click.BadParameter(str(error)) from None
    if isinstance(nodes, int) and nodes < 2:
        raise click.BadParameter(f"give at least 2 nodes, got {value!r}.")
    return nodes


def _hamiltonian_options(preset, molecule, **given):
    """The molecule builder's options from the command's (None or False: not given), refused where they do not apply."""
    flags = {"forcefield": "--forcefield", "charge_method": "--charge-method", "allow_charged": "--allow-charged", "nvt": "--nvt",
             "cutoff": "--cutoff", "switch_distance": "--switch-distance", "no_dispersion_correction": "--no-dispersion-correction",
             "constraints": "--constraints"}
    used = [name for name, value in given.items() if value not in (None, False)]
    if used and preset in ("lj", "lj-paper"):
        raise InvalidInputError(f"{', '.join(flags[n] for n in used)} apply to molecules in water, not to the Lennard-Jones presets.")
    solute_only = [n for n in used if n in ("forcefield", "charge_method", "allow_charged")]
    if solute_only and preset == "water":
        raise InvalidInputError(f"{', '.join(flags[n] for n in solute_only)} do not apply to --preset water (the solute is a TIP3P water).")
    parametrized = [n for n in used if n in ("forcefield", "charge_method")]
    if parametrized and "prmtop" in molecule:
        raise InvalidInputError(f"{', '.join(flags[n] for n in parametrized)} do not apply to --prmtop: the topology's own "
                                "parameters and charges are used.")
    options = {}
    if given["forcefield"] is not None:
        options["forcefield"] = given["forcefield"]
    if given["charge_method"] is not None:
        options["charge_method"] = given["charge_method"]
    if given["allow_charged"]:
        options["allow_charged"] = True
    if given["nvt"]:
        options["pressure"] = None
    if given["cutoff"] is not None:
        options["nonbonded_cutoff"] = given["cutoff"]
    if given["switch_distance"] is not None:
        options["switch_distance"] = given["switch_distance"]
    if given["no_dispersion_correction"]:
        options["dispersion_correction"] = False
    if given["constraints"] is not None:
        options["constraints"] = None if given["constraints"] == "none" else given["constraints"]
    return options


@click.command(help=_HELP)
@click.option("--preset", type=click.Choice(["lj", "lj-paper", "methane", "water"]), default=None,
              help="A ready-made system (lj: its excess chemical potential, truncated and with the tail correction, against the "
                   "JZG equation of state).")
@click.option("--smiles", default=None, help="Solute as SMILES (RDKit conformer, AM1-BCC charges).")
@click.option("--sdf", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Solute as an SD file (its 3D conformer with hydrogens; AM1-BCC charges).")
@click.option("--mol2", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Solute as mol2 (charges from the file, or --charge-method bcc).")
@click.option("--frcmod", type=click.Path(dir_okay=False, exists=True), default=None, help="Extra parameters for --mol2.")
@click.option("--prmtop", type=click.Path(dir_okay=False, exists=True), default=None, help="Solvated AMBER topology (with --inpcrd).")
@click.option("--inpcrd", type=click.Path(dir_okay=False, exists=True), default=None, help="Solvated AMBER coordinates.")
@click.option("--method", type=click.Choice(["mbar", "neural-ti", "both"]), default="mbar", show_default=True,
              help="Alchemical MBAR route, neural TI, or both side by side.")
@click.option("--nodes", default="11", show_default=True, callback=_nodes,
              help="neural TI: values of t sampled on the learned path: a count (equally spaced), a list 1,...,0, or 'schedule' "
                   "(the MBAR route's states); a solute with charges also gets a node at t = 0.8.")
@click.option("--train-steps", default=500, show_default=True, type=POSITIVE_INT, help="neural TI: training steps (molecules in water: fewer gave better overlap, see docs/solvation.md).")
@click.option("--samples", default=200, show_default=True, type=POSITIVE_INT, help="neural TI: MD samples per end state.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Output folder (resumed if it holds this run).")
@click.option("--iterations", default=500, show_default=True, type=POSITIVE_INT, help="Replica-exchange iterations per leg (total).")
@click.option("--md-steps", default=500, show_default=True, type=POSITIVE_INT, help="Langevin steps per iteration and state.")
@click.option("--timestep", default=None, type=FINITE_POSITIVE,
              help="fs (default: the system's; 2 for molecules, with HBond constraints, 0.005 τ for the LJ presets): every "
                   "leg's MD, and for molecules also neural TI's endpoint MD.")
@click.option("--padding", default=None, type=FINITE_POSITIVE, help="Water padding around the solute, nm (default 1.2).")
@click.option("--temperature", default=None, type=FINITE_POSITIVE, help="K (molecules: default 298.15).")
@click.option("--hydrogen-mass", default=None, type=FINITE_POSITIVE,
              help="amu: hydrogen mass repartitioning of the molecule (e.g. 3 with --timestep 4; water stays rigid TIP3P).")
@click.option("--density", default=None, type=FINITE_POSITIVE, help="--preset lj: reduced density ρ* (default 0.8).")
@click.option("--reduced-temperature", default=None, type=FINITE_POSITIVE, help="--preset lj: reduced temperature T* (default 1.2).")
@click.option("--forcefield", type=click.Choice(["gaff2", "gaff"]), default=None, help="GAFF version of the solute [default: gaff2].")
@click.option("--charge-method", type=click.Choice(["bcc", "file"]), default=None,
              help="AM1-BCC charges, or the --mol2 file's own [default: file for --mol2, bcc otherwise].")
@click.option("--allow-charged", is_flag=True,
              help="Build a charged solute with counter-ions (its ΔG then lacks finite-size and neutralization corrections).")
@click.option("--nvt", is_flag=True, help="No barostat in the solvent leg (default: 1 atm, MonteCarloBarostat).")
@click.option("--cutoff", default=None, type=FINITE_POSITIVE, help="PME real-space and LJ cutoff, nm (default 0.9).")
@click.option("--switch-distance", default=None, type=FINITE_POSITIVE, help="LJ switching start, nm (default: no switch).")
@click.option("--no-dispersion-correction", is_flag=True, help="Drop the long-range LJ correction of the solvent leg.")
@click.option("--constraints", type=click.Choice(["HBonds", "none", "AllBonds", "HAngles"]), default=None,
              help="Solute constraints (water stays rigid) [default: HBonds].")
@click.option("--checkpoint-interval", default=10, show_default=True, type=POSITIVE_INT,
              help="Iterations between stored positions (the samples of <du/dlambda> and of neural TI's TI estimate).")
@click.option("--equilibration", default=20, show_default=True, type=click.IntRange(min=0),
              help="Iterations without exchanges or storage before production (new runs).")
@click.option("--platform", default=None, help="OpenMM platform (default: chosen by timing; CUDA on a GPU machine).")
@click.option("--progress/--no-progress", default=None, help="Progress bars with ETA on stderr [default: when stderr is a terminal].")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Root seed of the legs' MD and replica swaps (a resume continues with new draws).")
@_user_errors
def solvation(preset, smiles, sdf, mol2, frcmod, prmtop, inpcrd, method, nodes, train_steps, samples, output, iterations, md_steps,
              timestep, padding, temperature, hydrogen_mass, density, reduced_temperature, forcefield, charge_method, allow_charged, nvt, cutoff, switch_distance,
              no_dispersion_correction, constraints, checkpoint_interval, equilibration, platform, progress, seed):
    from pathlib import Path

    from ..freeenergy import solvation_free_energy, solvation_system
    from ..freeenergy.neural_ti import neural_ti_free_energy

    molecule = {key: value for key, value in (("smiles", smiles), ("sdf", sdf), ("mol2", mol2), ("frcmod", frcmod), ("prmtop", prmtop),
                                               ("inpcrd", inpcrd)) if value is not None}
    if (preset is None) == (not molecule):
        raise InvalidInputError("give either --preset or a molecule (--smiles, --sdf, --mol2 or --prmtop/--inpcrd), not both or neither.")
    options = dict(molecule)
    if padding is not None:
        if preset in ("lj", "lj-paper"):
            raise InvalidInputError("--padding applies to molecules in water, not to the Lennard-Jones presets.")
        if "prmtop" in molecule:
            raise InvalidInputError("--padding does not apply to --prmtop: its box is already solvated.")
        options["padding"] = padding
    if temperature is not None:
        if preset in ("lj", "lj-paper"):
            raise InvalidInputError("the Lennard-Jones presets are defined by their reduced temperature; drop --temperature.")
        options["temperature"] = temperature
    if hydrogen_mass is not None:
        if preset in ("lj", "lj-paper", "water"):
            raise InvalidInputError(f"--hydrogen-mass does nothing for --preset {preset}: " + (
                "the Lennard-Jones presets have no hydrogens." if preset != "water" else
                "OpenMM keeps the masses of rigid water, and this solute is a TIP3P water."))
        options["hydrogen_mass"] = hydrogen_mass
    if timestep is not None and preset not in ("lj", "lj-paper"):  # a molecule's System records the step of its run
        options["timestep"] = timestep / 1000.0
    for value, key, flag in ((density, "density", "--density"), (reduced_temperature, "reduced_temperature", "--reduced-temperature")):
        if value is not None:
            if preset != "lj":
                raise InvalidInputError(f"{flag} sets the state of --preset lj (the identical-particle LJ fluid) only.")
            options[key] = value
    options.update(_hamiltonian_options(preset, molecule, forcefield=forcefield, charge_method=charge_method,
                                        allow_charged=allow_charged, nvt=nvt, cutoff=cutoff, switch_distance=switch_distance,
                                        no_dispersion_correction=no_dispersion_correction, constraints=constraints))
    system = solvation_system(preset, **options)
    from ..freeenergy.mbar_route import _mpi_comm

    comm = _mpi_comm()
    if comm is not None and method != "mbar":
        raise InvalidInputError("under mpirun only --method mbar runs (its replica exchange is distributed over the ranks); "
                                "run neural TI in one process.")
    echo = click.echo if comm is None or comm.rank == 0 else (lambda *args, **kwargs: None)  # rank 0 reports, once
    if method == "both":  # neural TI's stored files are checked before the hours of the MBAR route
        from ..freeenergy.neural_ti import check_stored_counts

        check_stored_counts(output, samples, train_steps)
    if method in ("mbar", "both"):
        result = solvation_free_energy(system, output, n_iterations=iterations, md_steps=md_steps, timestep=timestep,
                                       checkpoint_interval=checkpoint_interval, equilibration_iterations=equilibration,
                                       platform=platform, progress=progress, seed=seed)
        echo(result.to_markdown())
    if method in ("neural-ti", "both"):
        neural_ti_free_energy(system, output, n_samples=samples, n_train_steps=train_steps, nodes=nodes, n_iterations=iterations,
                              md_steps=md_steps, timestep=timestep, equilibration_iterations=equilibration,
                              checkpoint_interval=checkpoint_interval, platform=platform, progress=progress, seed=seed)
        echo((Path(output) / "neural_ti.md").read_text())
    echo(f"results in {output}/")
