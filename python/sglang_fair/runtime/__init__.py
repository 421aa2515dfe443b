"""sglang_fair inside SGLang's processes: the scheduler subclass and the process entry point.

Importing this package imports nothing from SGLang; import the submodules where they are needed
(``runtime.process`` in the launcher, ``runtime.scheduler`` only inside the scheduler process).
"""
