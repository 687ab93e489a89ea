"""Whether the solvation extra's programs (AmberTools) and RDKit are here: tests that build molecules skip without them."""

import pytest

small_molecules = pytest.importorskip("openmm_flowplugin._systems.small_molecules")


def missing_tools():
    """``None`` if antechamber, sqm, parmchk2, tleap, cpptraj and RDKit are all available, else why not."""
    try:
        for tool in ("antechamber", "sqm", "parmchk2", "tleap", "cpptraj"):
            small_molecules._tool(tool)
    except ImportError as error:
        return str(error)
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return "RDKit is not installed: pip install openmm_flowplugin[solvation]"
    return None


needs_ambertools = pytest.mark.skipif(missing_tools() is not None, reason=f"needs AmberTools and RDKit: {missing_tools()}")
