"""TorchANI potentials as OpenMM forces, for a whole molecule or an ML subset of an MM system.

Needs the extra ``openmm_flowplugin[ani]`` (``torchani``). Weights are never downloaded: a named
model (``"ANI-2x"`` ...) is built from its architecture and loaded from a local state-dict file,
``$OPENMM_FLOWPLUGIN_ANI_DIR/<file>`` (default ``~/.cache/openmm_flowplugin/ani``) or a path you
pass, with ``torch.load(..., weights_only=True)``.

Units: torchani takes coordinates in Å and returns Hartree; :class:`ANIPotential` converts from
nm and to kJ/mol with torchani's own CODATA factors (:mod:`torchani.units`).
"""

__all__ = [
    "ANI_MODELS",
    "ANI_DIR_ENV_VAR",
    "ANIPotential",
    "load_ani_model",
    "small_ani_model",
    "ani_force",
    "create_mixed_system",
]

import os
import warnings
from pathlib import Path

import torch

from .as_force import as_openmm_force
from ..errors import InvalidInputError, InvalidTypeError, MissingDependencyError

#: Environment variable naming the folder that holds named models' state-dict files.
ANI_DIR_ENV_VAR = "OPENMM_FLOWPLUGIN_ANI_DIR"

#: Named models: torchani architecture presets, ensemble size, self-energy level of theory, state-dict file.
ANI_MODELS = {
    "ANI-1x": dict(symbols="SYMBOLS_1X", preset="ani1x", ensemble=8, lot="wb97x-631gd", file="ani1x_state_dict.pt"),
    "ANI-1ccx": dict(symbols="SYMBOLS_1X", preset="ani1x", ensemble=8, lot="ccsd(t)star-cbs", file="ani1ccx_state_dict.pt"),
    "ANI-2x": dict(symbols="SYMBOLS_2X", preset="ani2x", ensemble=8, lot="wb97x-631gd", file="ani2x_state_dict.pt"),
}

_MODEL_URL = "https://github.com/roitberg-group/torchani_model_zoo/releases/download/v0.1/"


def _torchani():
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The extensions")  # optional CUDA extensions
            import torchani
    except ImportError as error:
        raise MissingDependencyError(
            "TorchANI support needs torchani: install the extra `pip install openmm_flowplugin[ani]`."
        ) from error
    return torchani


def _ani_dir():
    return Path(os.environ.get(ANI_DIR_ENV_VAR, Path.home() / ".cache" / "openmm_flowplugin" / "ani"))


def _canonical_name(name):
    folded = {key.replace("-", "").lower(): key for key in ANI_MODELS}
    key = str(name).replace("-", "").replace("_", "").lower()
    if key not in folded:
        raise InvalidInputError(f"unknown ANI model {name!r}; known names: {sorted(ANI_MODELS)}, or pass a torchani model.")
    return folded[key]


def _build_named(name):
    torchani = _torchani()
    from torchani.arch import Assembler

    spec = ANI_MODELS[name]
    assembler = Assembler(periodic_table_index=True)
    assembler.set_symbols(getattr(torchani.utils, spec["symbols"]))
    assembler.set_global_cutoff_fn("cosine")
    assembler.set_aev_computer(radial=spec["preset"], angular=spec["preset"], strategy="pyaev")
    assembler.set_atomic_networks(ctor=spec["preset"])
    assembler.set_neighborlist("all_pairs")
    assembler.set_gsaes_as_self_energies(spec["lot"])  # overwritten by the state dict
    return assembler.assemble(spec["ensemble"])


def load_ani_model(model="ANI-2x", state_dict=None, model_index=None):
    """A TorchANI model with local weights, frozen, in float64.

    Parameters
    ----------
    model : str or torch.nn.Module
        A name in :data:`ANI_MODELS` (architecture built here, weights from ``state_dict`` or from
        ``$OPENMM_FLOWPLUGIN_ANI_DIR/<file>``), or a torchani model (e.g. from
        ``torchani.arch.simple_ani``), into which ``state_dict`` is loaded if given.
    state_dict : str or path, optional
        A local state-dict file, read with ``torch.load(weights_only=True)``.
    model_index : int, optional
        Keep one member of an ensemble.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    FileNotFoundError
        For a named model whose file is absent: the message names the expected path and how to
        provide it. Nothing is downloaded.

    Examples
    --------
    >>> load_ani_model("ANI-2x", state_dict="/nonexistent/ani2x_state_dict.pt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: ANI-2x weights are not available locally: expected /nonexistent/ani2x_state_dict.pt...
    """
    if isinstance(model, str):
        name = _canonical_name(model)
        path = Path(state_dict) if state_dict is not None else _ani_dir() / ANI_MODELS[name]["file"]
        if not path.is_file():
            raise FileNotFoundError(
                f"{name} weights are not available locally: expected {path}. Nothing is downloaded at run time. "
                f"On a machine with internet, fetch {_MODEL_URL}{ANI_MODELS[name]['file']} and copy it to {path} "
                f"(or set {ANI_DIR_ENV_VAR} to its folder, or pass state_dict='/path/to/{ANI_MODELS[name]['file']}')."
            )
        module = _build_named(name)
    elif isinstance(model, torch.nn.Module):
        _torchani()
        module, path = model, (Path(state_dict) if state_dict is not None else None)
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"state_dict file {path} does not exist.")
    else:
        raise InvalidTypeError(f"model must be a model name or a torchani model, got {type(model).__name__}.")
    if path is not None:
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if model_index is not None:
        module = module[model_index]
    module.requires_grad_(False)
    return module.to(torch.float64).eval()


def small_ani_model(symbols=("H", "C", "N", "O"), seed=0):
    """A small ANI-architecture model with random, seeded weights (for tests, examples, benchmarks).

    ANI-architecture AEVs (``torchani.arch.simple_ani`` with 8 radial and 4 x 2 angular terms, smaller than ANI-2x's) and one atomic network per element,
    zero self energies, no extra potentials. Its energies are meaningless but smooth.

    Examples
    --------
    >>> model = small_ani_model()
    >>> model.symbols
    ('H', 'C', 'N', 'O')
    """
    _torchani()
    from torchani.arch import simple_ani

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = simple_ani(tuple(symbols), lot="wb97x-631gd", self_energies="zero", repulsion=False,
                           radial_shifts=8, angular_shifts=4, sections=2)  # a small AEV: quick to pickle and run
    finally:
        torch.random.set_rng_state(generator_state)
    model.requires_grad_(False)
    return model.to(torch.float64).eval()


class ANIPotential(torch.nn.Module):
    """A TorchANI model as an energy module: positions (nm, shape (n, 3)) to kJ/mol.

    Parameters
    ----------
    model : torch.nn.Module
        A torchani model taking ``(species, coordinates_angstrom)`` with atomic numbers as species.
    atomic_numbers : sequence of int
        One per atom the module sees.

    Examples
    --------
    >>> import torch
    >>> potential = ANIPotential(small_ani_model(), [8, 1, 1])
    >>> potential(torch.tensor([[0.0, 0.0, 0.0], [0.096, 0.0, 0.0], [0.0, 0.096, 0.0]], dtype=torch.float64)).shape
    torch.Size([])
    """

    def __init__(self, model, atomic_numbers):
        super().__init__()
        torchani = _torchani()
        self.model = model
        self.register_buffer("species", torch.as_tensor(list(atomic_numbers), dtype=torch.long).unsqueeze(0))
        self.hartree_to_kjmol = float(torchani.units.HARTREE_TO_KJOULEPERMOL)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        coordinates = (positions * 10.0).to(torch.float64).unsqueeze(0)  # nm -> Å
        energy = self.model((self.species, coordinates)).energies
        return energy.sum() * self.hartree_to_kjmol


def _atomic_numbers(topology, atoms):
    elements = [atom.element for atom in topology.atoms()]
    missing = [i for i in atoms if elements[i] is None]
    if missing:
        raise InvalidInputError(f"atoms {missing} have no element in the topology; ANI needs atomic numbers.")
    return [elements[i].atomic_number for i in atoms]


def ani_force(model, topology, atoms=None, backend="python"):
    """An ANI model as an OpenMM Force on ``atoms`` (default: all atoms of ``topology``).

    Parameters
    ----------
    model : str or torch.nn.Module
        A torchani model, or a name for :func:`load_ani_model`.
    topology : openmm.app.Topology
        Gives the elements.
    atoms : sequence of int, optional
    backend : {"python", "torch", "auto"}
        As in :func:`openmm_flowplugin.as_openmm_force`.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> molecule = systems.get("alanine_dipeptide_vacuum")
    >>> type(ani_force(small_ani_model(), molecule.topology)).__name__
    'PythonForce'
    """
    if isinstance(model, str):
        model = load_ani_model(model)
    atoms = list(range(topology.getNumAtoms())) if atoms is None else [int(i) for i in atoms]
    potential = ANIPotential(model, _atomic_numbers(topology, atoms))
    particles = None if atoms == list(range(topology.getNumAtoms())) else atoms
    return as_openmm_force(potential, particles=particles, backend=backend, system=topology.getNumAtoms())




def create_mixed_system(system, topology, ml_atoms, model, lambda_name="lambda_ml", lambda_value=1.0, backend="python"):
    """An MM system whose ``ml_atoms`` interact internally through an ANI model, switched by ``lambda``.

    A thin use of the generic :func:`openmm_flowplugin.forces.mixing.create_mixed_system` (see it for
    the energy function and the supported forces) with :func:`ani_force` as the ML part.

    Parameters
    ----------
    system : openmm.System
    topology : openmm.app.Topology
        Gives the elements of the ML atoms.
    ml_atoms : sequence of int
    model : str or torch.nn.Module
        A torchani model, or a name for :func:`load_ani_model`.
    lambda_name : str
    lambda_value : float
    backend : {"python", "torch", "auto"}

    Returns
    -------
    openmm.System

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> molecule = systems.get("alanine_dipeptide_vacuum")
    >>> mixed = create_mixed_system(molecule.system, molecule.topology, range(22), small_ani_model())
    >>> type(mixed.getForce(mixed.getNumForces() - 1)).__name__
    'CustomCVForce'
    """
    from .mixing import create_mixed_system as mix

    atoms = sorted({int(i) for i in ml_atoms})
    if not atoms or atoms[-1] >= system.getNumParticles() or atoms[0] < 0:
        raise InvalidInputError(f"ml_atoms must be a non-empty set of particle indices below {system.getNumParticles()}.")
    if isinstance(model, str):
        model = load_ani_model(model)
    return mix(system, atoms, ani_force(model, topology, atoms, backend=backend), lambda_name=lambda_name,
               lambda_value=lambda_value, backend=backend)
