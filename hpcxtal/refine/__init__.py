"""Refinement: representation-space fit of free variables, latent fit, rounds."""
