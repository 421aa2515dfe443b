"""sglang_fair: SGLang with FairBatching scheduling."""

__version__ = "0.1.0"

#: The exact SGLang release the runtime patches; checked at start-up and by the tests.
SGLANG_VERSION = "0.5.23"
