"""Topology of periodic nets: bond graph, dimensionality, signature, first de-duplication."""
