"""Post-relax screening: what a campaign may call new, decided on relaxed structures.

``validate``: coordination rule, relaxed topology and known-phase checks, row classes;
``known``: the known phases (graphite AB/AA, diamond, lonsdaleite, SACADA) by topology
key; ``closeness``: how far relaxation moved a structure.
"""
