"""Sphinx configuration: README as the landing page, Markdown guides, API reference from the docstrings.

Build with ``make docs`` (warnings are errors). The API pages under ``api/generated/`` are written by
autosummary at build time from the templates in ``api/_templates``; they are not edited by hand.
"""

import os

import openmm_flowplugin

os.environ.setdefault("MPLBACKEND", "Agg")

project = "openmm_flowplugin"
author = "openmm_flowplugin developers"
copyright = "openmm_flowplugin developers, MIT license"
release = version = openmm_flowplugin.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "api/_templates", "Thumbs.db", ".DS_Store"]
templates_path = ["api/_templates"]

# Markdown (MyST): README and the guides. Anchors for "#section" links inside and across pages.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# API reference. autosummary writes one page per public object; autodoc reads the docstrings.
autosummary_generate = True
autosummary_ignore_module_all = False  # a module page documents exactly its __all__
autodoc_typehints = "none"  # types are in the numpydoc "Parameters" sections
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # torch.nn.Module's docstrings are not ours

# numpydoc: class members are listed by autodoc (:members:), not by numpydoc's own tables.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "furo"
html_title = f"openmm_flowplugin {release}"

# Each root export (``openmm_flowplugin.FlowMCMove``) is documented once, under the name users
# import; the module that defines it points there instead of documenting it a second time.
_ROOT_EXPORTS = {
    name: getattr(openmm_flowplugin, name) for name in openmm_flowplugin._EXPORTS if name != "systems"
}


def _skip_root_exports(app, what, name, obj, skip, options):
    if what == "module" and name in _ROOT_EXPORTS and obj is _ROOT_EXPORTS[name]:
        return True
    return None


def _point_to_root_exports(app, what, name, obj, options, lines):
    if what != "module":
        return
    here = [n for n, value in _ROOT_EXPORTS.items() if getattr(value, "__module__", None) == name]
    if here:
        lines.append("")
        lines.append(".. rubric:: Exported at the package root")
        lines.append("")
        lines.extend(f"- :obj:`openmm_flowplugin.{n}`" for n in here)


def setup(app):
    app.connect("autodoc-skip-member", _skip_root_exports)
    app.connect("autodoc-process-docstring", _point_to_root_exports)
