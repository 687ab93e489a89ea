"""Old module paths of the flat layout (before 0.2), kept importable for stored data.

Two kinds of old paths exist: modules that moved into a subpackage (``moves`` -> ``mcmc.flow_move``),
served by the alias modules below, and modules that became a package of the same name (``flows``,
``forces``, ``proposals``, ``integrators``), whose ``__init__`` finds the old module's private
names (e.g. ``flows._Coupling``, pickled with every flow) through :func:`package_getattr`.

openmmtools storage files name each move's class by module and name, and every PythonForce in a
serialized System pickles its callable's module path: files written by the flat layout name
``openmm_flowplugin.moves``, ``openmm_flowplugin.python_force`` and so on. Each old path below is
a thin module whose attributes are looked up, in order, in the new modules it maps to, so
``openmm_flowplugin.moves.FlowMCMove is openmm_flowplugin.mcmc.FlowMCMove``. New code should
import from the new places; these aliases are resolved only when something imports them.
"""

__all__ = ["OLD_MODULES", "install", "package_getattr"]

import importlib
import importlib.abc
import importlib.util
import sys
import types

_PACKAGE = "openmm_flowplugin"

#: Old module (relative to the package) -> the new modules that now hold its names, searched in order.
OLD_MODULES = {
    "energy": ("bridge.energy", "_openmm_fast"),
    "coordinates": ("geometry.internal",),
    "checkpoints": ("flows.checkpoints", "outputs"),
    "training": ("flows.training", "analysis.weights"),
    "evaluation": ("analysis.evaluation", "analysis.weights"),
    "plotting": ("analysis.plotting",),
    "moves": ("mcmc.flow_move",),
    "_move_state": ("proposals.storage",),
    "reporters": ("integrators.reporter",),
    "python_force": ("forces.python_force",),
    "torch_force": ("forces.torch_force",),
    "ani": ("forces.ani",),
    "ani_mixed": ("forces.ani",),
    "molecular_system": ("systems.molecular_system",),
    "references": ("systems.references",),
    "simulate": ("simulation.md",),
}


class _AliasModule(types.ModuleType):
    """A module whose attributes come from other modules (looked up on first access)."""

    def __init__(self, name, sources):
        super().__init__(name, f"Old path of {', '.join(sources)} (kept for stored data; see openmm_flowplugin._compat).")
        self.__sources = sources

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        for source in self.__sources:
            module = importlib.import_module(source)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {self.__name__!r} (old path of {', '.join(self.__sources)}) has no attribute {attribute!r}")

    def __dir__(self):
        names = set()
        for source in self.__sources:
            names.update(dir(importlib.import_module(source)))
        return sorted(names)

    def __call__(self, *args, **kwargs):
        # ``openmm_flowplugin.simulate`` is both this old module and the public function: importing the
        # module replaces the package attribute, so the module stays callable as the function.
        return self.__getattr__(self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.rpartition(".")
        if prefix != _PACKAGE or name not in OLD_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        name = spec.name.rpartition(".")[2]
        return _AliasModule(spec.name, tuple(f"{_PACKAGE}.{new}" for new in OLD_MODULES[name]))

    def exec_module(self, module):
        pass


def install():
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


def package_getattr(package, modules):
    """A module ``__getattr__`` for ``package`` looking names up in its submodules ``modules`` (old flat module's names)."""

    def __getattr__(attribute):
        if not attribute.startswith("__"):
            for name in modules:
                module = importlib.import_module(f"{package}.{name}")
                if hasattr(module, attribute):
                    return getattr(module, attribute)
        raise AttributeError(f"module {package!r} has no attribute {attribute!r}")

    return __getattr__
