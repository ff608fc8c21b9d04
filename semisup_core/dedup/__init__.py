"""Near-duplicate removal between the pool and the evaluation sets (docs/dedup.md).

``stage`` (the ``dedup`` stage), ``calibration`` (copies injected under transforms, the
threshold), ``sheet`` (the contact sheet of the closest pairs). Import-free, like every
method package.
"""
