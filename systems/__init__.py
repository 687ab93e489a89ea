"""Builders, input files and small pretrained models of openmm_flowplugin's ready-made systems.

Installed as ``openmm_flowplugin._systems``; use :mod:`openmm_flowplugin.systems` to build them.
"""
