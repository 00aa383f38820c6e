"""How runs run, whatever they compute: the device to use, ``torchrun`` ranks, an ordered pool of worker
processes, per-stage timing (``--profile``) and the CLIs' one-line errors.

:mod:`~camloc.runtime.devices` (``resolve_device``), :mod:`~camloc.runtime.distributed` (``setup_distributed``),
:mod:`~camloc.runtime.workerpool` (``OrderedPool``), :mod:`~camloc.runtime.profiling` (``StageClock``, ``stage``),
:mod:`~camloc.runtime.errors` (``error_line``).
"""
