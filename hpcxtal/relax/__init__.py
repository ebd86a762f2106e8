"""Energy stage: batched relaxation of candidates with a machine-learned potential.

``config``: the stage's config section; ``models``: the batched energy-model interface
(CHGNet, MACE); ``neighbours``: neighbour lists, fresh or kept across steps; ``engine``:
batched relaxation with cell degrees of freedom (``cellfilter``) by ``lbfgs`` or
``fire``; ``reference``: graphite; ``table``: relaxing the rows of a table and adding
``energy``, ``e_rel``, ``status`` (``status.RelaxStatus``), ``status_reason``,
``relax_steps`` and how far each structure moved; ``stage``: the kernel on files.
"""
