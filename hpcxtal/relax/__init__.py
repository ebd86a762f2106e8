"""Energy stage: batched relaxation of candidates with a machine-learned potential.

``models``: the batched energy-model interface (CHGNet, MACE); ``fire``: batched FIRE
with cell degrees of freedom; ``reference``: graphite; ``table``: relaxing the rows of
a table and adding ``energy``, ``e_rel``, ``status`` (``status.RelaxStatus``), ``status_reason``, ``relax_steps`` and how far each structure moved.
"""
