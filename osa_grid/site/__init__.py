"""A synthetic LST-1 site: nights of R0 data, drive logs, run summaries and a toy Monte Carlo.

These modules need the ``lstchain`` extra (``pip install osa-grid[lstchain]``: numpy, astropy, protozfits,
ctapipe, ctapipe_io_lst, gammapy). The command line imports them only inside the ``osa-grid site``
commands, so osa-grid itself works without the extra.
"""
