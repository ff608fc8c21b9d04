"""The teacher/student method of Yalniz et al. 2019 (docs/teacher_student.md).

``score`` (the teacher over the pool), ``select`` (top-P classes per image, top-K images per
class, with the streaming ``topk``), ``analysis`` (the oracle's view of a selection), ``run``
(the whole method in-process), ``demo`` and ``report``. Kept import-free, so that a stage's
image imports only the module its command runs.
"""
